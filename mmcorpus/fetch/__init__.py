"""Getting bytes onto disk: the fetch plan and run, single files, checksums, URLs, archives, collections."""
