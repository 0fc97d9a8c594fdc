from mmcorpus.cli import main

main()
