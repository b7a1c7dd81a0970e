/* qmail-queue stand-in for the servers side by side (bench/servers.py).
 *
 * Reads the message (fd 0) and then the envelope (fd 1) to EOF and exits 0,
 * as the /bin/sh sink of the other figures does, but as one static binary:
 * no shell and no cat exec'd per message, so the queueing costs every
 * qmail row the same ~0.1 ms instead of ~1 ms, and the rows differ only in
 * the servers.  Built by the bench with `cc -static -O2`. */
#include <unistd.h>

static int drain(int fd)
{
    char buf[65536];
    ssize_t n;

    while ((n = read(fd, buf, sizeof buf)) != 0)
        if (n < 0)
            return 1;
    return 0;
}

int main(void)
{
    return drain(0) || drain(1) ? 54 : 0;  /* qmail-queue: unable to read */
}
