//! Test support: a seccomp filter on a thread of its own, standing in for
//! a kernel or a filesystem without a feature (`openat2`, `O_TMPFILE`,
//! `RENAME_NOREPLACE`) so that the code paths for them run here too.

use libc::{
    sock_filter, sock_fprog, BPF_ABS, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_RET, BPF_W,
};

/// When a [`Deny`] applies, from the low 32 bits of one argument.
#[derive(Debug, Clone, Copy)]
pub(super) enum When {
    /// Every call.
    Always,
    /// Argument `.0` is not `.1`.
    ArgNot(usize, u32),
    /// Argument `.0` has one of the bits `.1`.
    ArgHas(usize, u32),
}

/// A system call that fails with `errno` (when `when` says).
#[derive(Debug, Clone, Copy)]
pub(super) struct Deny {
    pub(super) nr: libc::c_long,
    pub(super) when: When,
    pub(super) errno: i32,
}

fn stmt(code: u32, k: u32) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(op: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        code: (BPF_JMP | op | BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

/// The offset in `seccomp_data` of the low half of argument `n`.
fn arg(n: usize) -> u32 {
    let base = std::mem::offset_of!(libc::seccomp_data, args) + 8 * n;
    (base + if cfg!(target_endian = "big") { 4 } else { 0 }) as u32
}

/// Runs `f` on a new thread whose system calls `deny` refuses (a seccomp
/// filter binds only the thread that installs it, and its children).
pub(super) fn on_thread_denying<T: Send + 'static>(
    deny: &[Deny],
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let nr = std::mem::offset_of!(libc::seccomp_data, nr) as u32;
    let mut filter = Vec::new();
    for d in deny {
        let fail = stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ERRNO | d.errno as u32);
        filter.push(stmt(BPF_LD | BPF_W | BPF_ABS, nr));
        match d.when {
            When::Always => filter.extend([jump(BPF_JEQ, d.nr as u32, 0, 1), fail]),
            When::ArgNot(n, v) => filter.extend([
                jump(BPF_JEQ, d.nr as u32, 0, 3),
                stmt(BPF_LD | BPF_W | BPF_ABS, arg(n)),
                jump(BPF_JEQ, v, 1, 0),
                fail,
            ]),
            When::ArgHas(n, bits) => filter.extend([
                jump(BPF_JEQ, d.nr as u32, 0, 3),
                stmt(BPF_LD | BPF_W | BPF_ABS, arg(n)),
                jump(BPF_JSET, bits, 0, 1),
                fail,
            ]),
        }
    }
    filter.push(stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW));
    std::thread::spawn(move || {
        let prog = sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_mut_ptr(),
        };
        // SAFETY: plain system calls on this thread; `prog` points to a
        // filter that outlives the call (the kernel copies it).
        unsafe {
            assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
            let r = libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const sock_fprog,
            );
            assert_eq!(r, 0, "seccomp: {}", std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}
