/*
 * File descriptors of the two engines (mwcommsd's and the INS's): both hold one or two per
 * forwarded socket, thousands of them, in a process whose Python side still opens XenStore
 * connections (pyxs waits on them with select(), which takes fds below FD_SETSIZE only).
 *
 * Header-only: both engines are in the same _native build and in the C test programs, which
 * list their sources.
 */
#ifndef MWCOMMS_FDLIMIT_H
#define MWCOMMS_FDLIMIT_H

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <unistd.h>

/**
 * mw_nofile_raise() - allow as many fds as the system lets us.
 *
 * Raising the hard RLIMIT_NOFILE up to fs.nr_open needs CAP_SYS_RESOURCE (the daemons run as
 * root); without it the soft limit goes up to the hard one.
 *
 * @return 0, or -errno of getrlimit/setrlimit (the limit stays as it was)
 */
static inline int mw_nofile_raise(void)
{
    struct rlimit rl;
    unsigned long nr_open = 0;
    FILE *f = fopen("/proc/sys/fs/nr_open", "re");

    if (f) {
        if (fscanf(f, "%lu", &nr_open) != 1)
            nr_open = 0;
        fclose(f);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return -errno;
    if (nr_open > rl.rlim_max) {
        struct rlimit up = { .rlim_cur = nr_open, .rlim_max = nr_open };

        if (setrlimit(RLIMIT_NOFILE, &up) == 0)
            return 0;
    }
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            return -errno;
    }
    return 0;
}

/**
 * mw_fd_high() - move a per-socket fd out of the select() range.
 * @fd: a valid fd the caller owns; O_CLOEXEC is assumed (the copy has it)
 *
 * The fds below FD_SETSIZE stay for the Python side of the daemon. When the limit does not
 * reach above FD_SETSIZE (EINVAL) or it is full up there (EMFILE), @fd is kept as it is.
 *
 * @return the fd to use from now on: a copy at FD_SETSIZE or above (@fd is closed), or @fd
 */
static inline int mw_fd_high(int fd)
{
    int high = fcntl(fd, F_DUPFD_CLOEXEC, FD_SETSIZE);

    if (high < 0)
        return fd;
    close(fd);
    return high;
}

#endif /* MWCOMMS_FDLIMIT_H */
