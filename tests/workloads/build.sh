#!/bin/sh
# build.sh OUTDIR — builds the migration-test workloads into OUTDIR:
# compiles memhog, threads, vforker and madviser, copies the Python workloads (executable, with
# shebangs).
set -eu
if [ "$#" -ne 1 ]; then
    echo "usage: build.sh OUTDIR" >&2
    exit 2
fi
src=$(cd "$(dirname "$0")" && pwd)
out=$1
mkdir -p "$out"
gcc -O2 -Wall -Wextra -Werror -o "$out/memhog" "$src/memhog.c"
gcc -O2 -Wall -Wextra -Werror -pthread -o "$out/threads" "$src/threads.c"
gcc -O2 -Wall -Wextra -Werror -o "$out/vforker" "$src/vforker.c"
gcc -O2 -Wall -Wextra -Werror -o "$out/madviser" "$src/madviser.c"
for py in appender.py tree.py tcpserver.py streamer.py talker.py echoserver.py; do
    cp "$src/$py" "$out/$py"
    chmod +x "$out/$py"
done
