#!/bin/sh
# The command the entrypoint execs in tests: records its PID, arguments, inherited signal state
# and how many sockets it inherited, written atomically so a test never reads half a report. The
# status file is read with shell builtins only: a forked helper would see the shell's signals
# blocked while it forks (the sockets are counted after it).
out=$1
shift
{
    echo "pid=$$"
    echo "args=$*"
    while IFS= read -r line; do
        case $line in SigIgn:* | SigBlk:*) echo "$line" ;; esac
    done < /proc/$$/status
    echo "sockets=$(ls -l /proc/$$/fd | grep -c 'socket:')"  # inherited, still open
} > "$out.tmp" && mv "$out.tmp" "$out"
