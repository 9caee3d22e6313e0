#!/bin/sh
# The command the entrypoint execs in tests: records its PID, arguments and inherited signal
# state, written atomically so a test never reads half a report.
out=$1
shift
{
    echo "pid=$$"
    echo "args=$*"
    grep -E '^Sig(Ign|Blk):' /proc/$$/status
} > "$out.tmp" && mv "$out.tmp" "$out"
