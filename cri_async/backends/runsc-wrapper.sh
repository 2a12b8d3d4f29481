#!/bin/sh
# Written by cri-async for each runsc handler at startup (from cri_async/backends/
# runsc-wrapper.sh, with the @...@ values filled in); do not edit.
# conmon runs this as its OCI runtime: runsc without --tty, in its own session, and for
# pod containers a holder that gives `runsc start` conmon's stdio (see the module's notes).
runsc() { @RUNSC@ @FLAGS@ "$@"; }

if [ "${1-}" = @HOLD_FLAG@ ]; then
    # The holder. fds 0-2: conmon's pipes; fd 3: the start FIFO, open since create.
    bundle=$2 cid=$3
    read -r _ <&3 || exit 255
    exec 3<&-
    runsc --log="$bundle/@START_LOG@" start "$cid"
    rc=$?
    exec 4<>"$bundle/@STARTED_FIFO@"
    echo "$rc" >&4
    exec 4>&- </dev/null >/dev/null 2>&1
    [ "$rc" -eq 0 ] || exit 255
    out=$(runsc wait "$cid" 2>>"$bundle/@WAIT_LOG@")
    case $out in
    *'"exitStatus":'*)
        code=${out##*'"exitStatus":'}
        code=${code%%[!0-9]*}
        ;;
    *) code= ;;
    esac
    exit "${code:-255}"
fi

for a do
    shift
    [ "$a" = --tty ] || set -- "$@" "$a"
done

cmd= bundle= pidfile= cid= prev=
for a do
    case $prev in
    --bundle | -bundle | -b) bundle=$a ;;
    --pid-file | -pid-file) pidfile=$a ;;
    esac
    case $a in
    --bundle=* | -bundle=*) bundle=${a#*=} ;;
    --pid-file=* | -pid-file=*) pidfile=${a#*=} ;;
    -*) ;;
    *) [ -n "$cmd" ] || cmd=$a ;;
    esac
    prev=$a cid=$a
done

if [ "$cmd" = create ] && [ -n "$bundle" ] && [ -p "$bundle/@START_FIFO@" ]; then
    exec 3<>"$bundle/@START_FIFO@" || exit 1
    setsid @RUNSC@ "$@" 3<&- || exit
    # A background command gets /dev/null as stdin (dash opens it before the command's
    # own redirections): hand conmon's stdin over through fd 4.
    exec 4<&0
    setsid "$0" @HOLD_FLAG@ "$bundle" "$cid" <&4 4<&- &
    exec 4<&-
    echo "$!" >"$pidfile"
    exit 0
fi

if [ "$cmd" = exec ] && [ -n "$pidfile" ]; then
    ipid=${pidfile%/*}
    ipid=${ipid%/*}/@INTERNAL_PID@
    if [ -f "$ipid" ]; then
        seen=
        for a do
            shift
            set -- "$@" "$a"
            if [ -z "$seen" ] && [ "$a" = exec ]; then
                seen=1
                set -- "$@" "--internal-pid-file=$ipid"
            fi
        done
    fi
fi

exec setsid @RUNSC@ "$@"
