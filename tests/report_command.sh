#!/bin/sh
# The command the entrypoint execs in tests: records its PID, arguments and inherited signal
# state, written atomically so a test never reads half a report. The status file is read with
# shell builtins only: a forked helper would see the shell's signals blocked while it forks.
out=$1
shift
{
    echo "pid=$$"
    echo "args=$*"
    while IFS= read -r line; do
        case $line in SigIgn:* | SigBlk:*) echo "$line" ;; esac
    done < /proc/$$/status
} > "$out.tmp" && mv "$out.tmp" "$out"
