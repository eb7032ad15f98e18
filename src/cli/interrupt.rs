//! What Ctrl-C says: a command that can be interrupted halfway (a push, a
//! pull) sets the message naming what to rerun; the signal handler prints
//! it and exits with 130, as a shell expects of SIGINT.
//!
//! The handler only calls `write` and `_exit`, which are async-signal-safe;
//! the message is a leaked buffer it reads through an atomic pointer.

use std::sync::Once;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

static MESSAGE: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static MESSAGE_LEN: AtomicUsize = AtomicUsize::new(0);
static INSTALL: Once = Once::new();

/// From now on, Ctrl-C (or SIGTERM) prints `message` on stderr and exits with 130.
pub fn on_interrupt(message: String) {
    // A new line first: the progress bar may be on the current one.
    let text: &'static [u8] = Box::leak(format!("\np2pfs: {message}\n").into_bytes().into_boxed_slice());
    MESSAGE_LEN.store(0, Ordering::SeqCst);
    MESSAGE.store(text.as_ptr().cast_mut(), Ordering::SeqCst);
    MESSAGE_LEN.store(text.len(), Ordering::SeqCst);
    INSTALL.call_once(|| {
        let handler = handle as extern "C" fn(libc::c_int);
        // SAFETY: `handle` is async-signal-safe (it only reads atomics and
        // calls write and _exit), and installing a handler has no other effect.
        unsafe {
            libc::signal(libc::SIGINT, handler as libc::sighandler_t);
            libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
        }
    });
}

/// The interruptible part is over: Ctrl-C just ends the process.
pub fn clear() {
    MESSAGE_LEN.store(0, Ordering::SeqCst);
}

extern "C" fn handle(_signal: libc::c_int) {
    let (ptr, len) = (MESSAGE.load(Ordering::SeqCst), MESSAGE_LEN.load(Ordering::SeqCst));
    // SAFETY: `ptr` points at a leaked buffer of at least `len` bytes (the
    // length is stored only after the pointer it belongs to), or `len` is 0.
    unsafe {
        if len > 0 {
            libc::write(2, ptr.cast(), len);
        }
        libc::_exit(130);
    }
}
