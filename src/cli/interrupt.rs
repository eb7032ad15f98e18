//! What Ctrl-C says: a command that can be interrupted halfway (a push, a
//! pull) sets the message naming what to rerun; the signal handler prints
//! it and exits with 130, as a shell expects of SIGINT.
//!
//! The handler only calls `write` and `_exit`, which are async-signal-safe;
//! the message is a leaked slice it reads through one atomic pointer, so it
//! always sees a pointer and the length that belongs to it.

use std::sync::Once;
use std::sync::atomic::{AtomicPtr, Ordering};

static MESSAGE: AtomicPtr<&'static [u8]> = AtomicPtr::new(std::ptr::null_mut());
static INSTALL: Once = Once::new();

/// From now on, Ctrl-C (or SIGTERM) prints `message` on stderr and exits with 130.
pub fn on_interrupt(message: String) {
    // A new line first: the progress bar may be on the current one.
    let text: &'static [u8] = Box::leak(format!("\np2pfs: {message}\n").into_bytes().into_boxed_slice());
    // Leaked too: the handler may still be reading an earlier one.
    MESSAGE.store(Box::leak(Box::new(text)), Ordering::SeqCst);
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
    MESSAGE.store(std::ptr::null_mut(), Ordering::SeqCst);
}

extern "C" fn handle(_signal: libc::c_int) {
    let message = MESSAGE.load(Ordering::SeqCst);
    // SAFETY: `message` is null or points at a leaked `&'static [u8]`, never
    // freed; `write` and `_exit` are async-signal-safe.
    unsafe {
        if let Some(text) = message.as_ref() {
            libc::write(2, text.as_ptr().cast(), text.len());
        }
        libc::_exit(130);
    }
}
