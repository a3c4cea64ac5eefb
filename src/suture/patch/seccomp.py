"""A seccomp filter for maintainer scripts, no weaker than Docker's default profile.

The filter is an allow-list: the system calls that Docker's default profile allows
a container without extra capabilities (as published in moby/profiles, 2026), with
the same argument rules (``clone`` without namespace flags, ``clone3`` answered with
``ENOSYS`` so that the C library falls back to ``clone``, ``socket`` without
``AF_ALG``/``AF_VSOCK``, ``personality`` with the harmless personas only), plus
``chroot`` (scripts keep ``CAP_SYS_CHROOT``, as in Docker). Every other call fails
with ``EPERM``; calls of another ABI than the host's native one (32-bit x86 on
amd64) kill the caller. So ``mount``, ``umount2``, ``pivot_root``, ``unshare``,
``setns``, ``bpf``, ``perf_event_open``, ``ptrace``, ``kexec_load``, module loading,
``keyctl``, ``userfaultfd``, ``open_by_handle_at``, ``io_uring_*``, the new mount API
and ``reboot`` are refused whatever capabilities a script could gain.

The BPF program is built with libseccomp (``libseccomp.so.2``, through
:mod:`ctypes`: a system library every Debian, Ubuntu and Fedora host has, since apt
and systemd need it; no Python package). :func:`filter_bpf` returns it, or raises
:class:`SeccompUnavailable` saying why not; the sandbox then refuses to run scripts
and reports that reason.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
import tempfile

_ALLOWED = """
    accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod
    chown chown32 clock_adjtime clock_adjtime64 clock_getres clock_getres_time64
    clock_gettime clock_gettime64 clock_nanosleep clock_nanosleep_time64 close
    close_range connect copy_file_range creat dup dup2 dup3 epoll_create epoll_create1
    epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd
    eventfd2 execve execveat exit exit_group faccessat faccessat2 fadvise64 fadvise64_64
    fallocate fanotify_mark fchdir fchmod fchmodat fchmodat2 fchown fchown32 fchownat
    fcntl fcntl64 fdatasync fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat
    fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate ftruncate64 futex futex_requeue
    futex_time64 futex_wait futex_waitv futex_wake futimesat getcpu getcwd getdents
    getdents64 getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups getgroups32
    getitimer getpeername getpgid getpgrp getpid getppid getpriority getrandom getresgid
    getresgid32 getresuid getresuid32 getrlimit get_robust_list getrusage getsid
    getsockname getsockopt get_thread_area gettid gettimeofday getuid getuid32 getxattr
    getxattrat inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel
    ioctl io_destroy io_getevents io_pgetevents io_pgetevents_time64 ioprio_get
    ioprio_set io_setup io_submit ipc kill landlock_add_rule landlock_create_ruleset
    landlock_restrict_self lchown lchown32 lgetxattr link linkat listen listmount
    listxattr listxattrat llistxattr _llseek lremovexattr lseek lsetxattr lstat lstat64
    madvise map_shadow_stack membarrier memfd_create memfd_secret mincore mkdir mkdirat
    mknod mknodat mlock mlock2 mlockall mmap mmap2 mprotect mq_getsetattr mq_notify
    mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend mq_timedsend_time64
    mq_unlink mremap mseal msgctl msgget msgrcv msgsnd msync munlock munlockall munmap
    name_to_handle_at nanosleep newfstatat _newselect open openat openat2 pause
    pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll
    ppoll ppoll_time64 prctl pread64 preadv preadv2 prlimit64 process_mrelease pselect6
    pselect6_time64 pwrite64 pwritev pwritev2 read readahead readlink readlinkat readv
    recv recvfrom recvmmsg recvmmsg_time64 recvmsg remap_file_pages removexattr
    removexattrat rename renameat renameat2 restart_syscall riscv_hwprobe rmdir rseq
    rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend
    rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity
    sched_getattr sched_getparam sched_get_priority_max sched_get_priority_min
    sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64
    sched_setaffinity sched_setattr sched_setparam sched_setscheduler sched_yield
    seccomp select semctl semget semop semtimedop semtimedop_time64 send sendfile
    sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32 setfsuid setfsuid32 setgid
    setgid32 setgroups setgroups32 setitimer setpgid setpriority setregid setregid32
    setresgid setresgid32 setresuid setresuid32 setreuid setreuid32 setrlimit
    set_robust_list setsid setsockopt set_thread_area set_tid_address setuid setuid32
    setxattr setxattrat shmat shmctl shmdt shmget shutdown sigaltstack signalfd
    signalfd4 sigprocmask sigreturn socketcall socketpair splice stat stat64 statfs
    statfs64 statmount statx symlink symlinkat sync sync_file_range syncfs sysinfo tee
    tgkill time timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64
    timer_settime timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64
    timerfd_settime timerfd_settime64 times tkill truncate truncate64 ugetrlimit umask
    uname unlink unlinkat uretprobe utime utimensat utimensat_time64 utimes vfork
    vmsplice wait4 waitid waitpid write writev
"""
ALLOWED = tuple(_ALLOWED.split())
ALLOWED_WITH_CHROOT = ("chroot",)
_ARCH_ONLY = {"x86_64": ("arch_prctl", "modify_ldt"),
              "aarch64": ("arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2",
                          "breakpoint", "cacheflush", "set_tls"),
              "ppc64le": ("sync_file_range2", "swapcontext"),
              "s390x": ("s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"),
              "riscv64": ("riscv_flush_icache",)}
_CLONE_NAMESPACES = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
_PERSONAS = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)  # LINUX, UNAME26, ADDR_NO_RANDOMIZE..
_AF_ALG, _AF_VSOCK = 38, 40

_ACT_ALLOW = 0x7FFF0000
_FLTATR_CTL_OPTIMIZE = 8  # libseccomp >= 2.5: 2 = a binary tree of the syscall numbers
_CMP_LT, _CMP_EQ, _CMP_GT, _CMP_MASKED_EQ = 2, 4, 6, 7


def _act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class SeccompUnavailable(Exception):
    """No seccomp filter can be built here (the message says why)."""


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


@functools.cache
def _library() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise SeccompUnavailable(f"libseccomp is not installed ({exc}); install "
                                 "libseccomp2 (Debian, Ubuntu) or libseccomp (Fedora)") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.restype = ctypes.c_int
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_export_bpf.restype = ctypes.c_int
    lib.seccomp_attr_set.restype = ctypes.c_int
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def _rules() -> list[tuple[str, int, list[tuple[int, int, int, int]]]]:
    """(syscall, action, [(arg, op, a, b), ...]); one rule per line, OR-ed by name."""
    allow: list[tuple[str, int, list[tuple[int, int, int, int]]]] = [
        (name, _ACT_ALLOW, []) for name in (*ALLOWED, *ALLOWED_WITH_CHROOT,
                                            *_ARCH_ONLY.get(os.uname().machine, ()))]
    allow += [("clone", _ACT_ALLOW, [(0, _CMP_MASKED_EQ, _CLONE_NAMESPACES, 0)]),
              ("clone3", _act_errno(errno.ENOSYS), []),
              ("socket", _ACT_ALLOW, [(0, _CMP_LT, _AF_ALG, 0)]),
              ("socket", _ACT_ALLOW, [(0, _CMP_EQ, _AF_ALG + 1, 0)]),
              ("socket", _ACT_ALLOW, [(0, _CMP_GT, _AF_VSOCK, 0)])]
    allow += [("personality", _ACT_ALLOW, [(0, _CMP_EQ, persona, 0)]) for persona in _PERSONAS]
    return allow


@functools.cache
def filter_bpf() -> bytes:
    """The filter as a classic BPF program, as ``bwrap --seccomp`` reads it."""
    lib = _library()
    ctx = lib.seccomp_init(_act_errno(errno.EPERM))
    if not ctx:
        raise SeccompUnavailable("libseccomp could not start a filter")
    try:
        # A binary search instead of ~350 comparisons a call (emulated programs make many);
        # older libseccomp refuses the attribute and builds the linear filter.
        lib.seccomp_attr_set(ctx, _FLTATR_CTL_OPTIMIZE, 2)
        for name, action, args in _rules():
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number == -1:  # unknown to this libseccomp: stays refused
                continue
            cmps = (_ArgCmp * max(len(args), 1))(*(_ArgCmp(*a) for a in args))
            # A call this architecture lacks is refused by libseccomp: it stays denied.
            lib.seccomp_rule_add_array(ctx, action, number, len(args), cmps)
        with tempfile.TemporaryFile() as out:
            if lib.seccomp_export_bpf(ctx, out.fileno()) != 0:
                raise SeccompUnavailable("libseccomp could not export the filter")
            out.seek(0)
            program = out.read()
    finally:
        lib.seccomp_release(ctx)
    if not program or len(program) % 8:
        raise SeccompUnavailable("libseccomp exported no filter")
    return program
