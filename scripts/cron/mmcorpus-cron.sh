#!/usr/bin/env bash
# Run `mmcorpus fetch` unattended, from cron. Usage: mmcorpus-cron.sh NAME... [fetch options]
#
# Environment:
#   MMCORPUS_ROOT          the data root (required: cron has no useful default)
#   MMCORPUS_BIN           the mmcorpus command (default: mmcorpus on PATH; cron's PATH is short, so a full
#                          path such as /opt/venvs/mmcorpus/bin/mmcorpus is safer)
#   MMCORPUS_LOG_DIR       logs and JSON summaries (default: $MMCORPUS_ROOT/logs)
#   MMCORPUS_LOG_KEEP_DAYS logs older than this are deleted (default: 30)
#
# Exit status, and what cron mails (cron mails any output):
#   0   fetch done, or another run still holds the lock (exit 75: the next cron slot will continue): silent
#   *   anything else: one line naming the exit code and log, then the log's last lines, on stderr
set -uo pipefail

if [[ -z "${MMCORPUS_ROOT:-}" ]]; then
    echo "mmcorpus-cron: MMCORPUS_ROOT is not set" >&2
    exit 2
fi
if [[ $# -eq 0 ]]; then
    echo "usage: mmcorpus-cron.sh NAME... [fetch options]" >&2
    exit 2
fi
export MMCORPUS_ROOT
bin="${MMCORPUS_BIN:-mmcorpus}"
log_dir="${MMCORPUS_LOG_DIR:-$MMCORPUS_ROOT/logs}"
mkdir -p "$log_dir" || exit 1

stamp="$(date +%Y%m%dT%H%M%S)-$$"  # the pid keeps two runs started in the same second apart
log="$log_dir/fetch-$stamp.log"
summary="$log_dir/fetch-$stamp.json"

# --json: the final summary on stdout (kept as a file for dashboards); --quiet: only errors on stderr.
# --log-file gets every line, the error line that ended the run and the summary: stderr is kept apart (not
# appended to the log, where each error would appear twice) and printed only when the run failed.
stderr="$log_dir/.fetch-$stamp.stderr"
"$bin" fetch "$@" --quiet --json --log-file "$log" >"$summary.tmp" 2>"$stderr"
rc=$?
if [[ $rc -eq 75 ]]; then
    rm -f "$summary.tmp" "$log"  # nothing ran: keep fetch-last.json pointing at the last real run
else
    mv -f "$summary.tmp" "$summary"
    ln -sfn "$(basename "$summary")" "$log_dir/fetch-last.json"
fi

find "$log_dir" -maxdepth 1 -name 'fetch-*' -type f -mtime +"${MMCORPUS_LOG_KEEP_DAYS:-30}" -delete 2>/dev/null

case $rc in
    0)
        ;;
    75)
        # Another run (an earlier cron slot, or a person) holds the lock: not an error, try next time.
        echo "$(date '+%F %T') busy: another run holds the lock ($*)" >>"$log_dir/cron-busy.log"
        rc=0
        ;;
    *)
        echo "mmcorpus-cron: 'mmcorpus fetch $*' failed with exit $rc (1: a step failed, 2: bad usage or config); log: $log" >&2
        if [[ -s "$log" ]]; then
            tail -n 20 "$log" >&2
        else  # the log could not even be opened (the one-line error says why)
            cat "$stderr" >&2
        fi
        ;;
esac
rm -f "$stderr"
exit $rc
