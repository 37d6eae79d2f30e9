//! Running a network round trip with the GVL released, so other Ruby threads run while this one
//! waits on Redis, and so the wait stays interruptible.
//!
//! `rb_thread_call_without_gvl2` is used rather than the plain variant: the plain one checks
//! interrupts after the call and may longjmp through these Rust frames, skipping destructors.
//! Here interrupts are checked afterwards through magnus's protected `thread_check_ints`, which
//! turns a pending `Thread#kill`, `Timeout::Error` or `Interrupt` into an `Err` that unwinds
//! Rust normally. The unblock function cancels the call's token, which shuts the socket down.

use gitlab_multistore::CancelToken;
use magnus::{Error, Ruby};
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::null_mut;

struct Call<F, R> {
    work: Option<F>,
    result: Option<std::thread::Result<R>>,
}

unsafe extern "C" fn run_call<F, R>(data: *mut c_void) -> *mut c_void
where
    F: FnOnce() -> R,
{
    // SAFETY: `data` is the `Call` that `without_gvl` keeps alive across this call.
    let call = unsafe { &mut *(data as *mut Call<F, R>) };
    if let Some(work) = call.work.take() {
        // A panic must never unwind into Ruby's C frames.
        call.result = Some(catch_unwind(AssertUnwindSafe(work)));
    }
    null_mut()
}

unsafe extern "C" fn unblock(data: *mut c_void) {
    // SAFETY: `data` is the token that `without_gvl` borrows for the whole call.
    let token = unsafe { &*(data as *const CancelToken) };
    token.cancel();
}

/// Runs `work` without the GVL. `work` must not touch any Ruby object.
pub fn without_gvl<F, R>(ruby: &Ruby, cancel: &CancelToken, work: F) -> Result<R, Error>
where
    F: FnOnce() -> R,
{
    let mut call = Call {
        work: Some(work),
        result: None,
    };
    loop {
        // SAFETY: both pointers outlive the call; the trampoline and unblock function only
        // cast them back to the types they were made from.
        unsafe {
            rb_sys::rb_thread_call_without_gvl2(
                Some(run_call::<F, R>),
                &mut call as *mut Call<F, R> as *mut c_void,
                Some(unblock),
                cancel as *const CancelToken as *mut c_void,
            );
        }
        if call.result.is_some() {
            break;
        }
        // An interrupt was already pending, so Ruby did not run the work: let Ruby handle the
        // interrupt (raising if it is an exception), then try again.
        ruby.thread_check_ints()?;
    }
    let outcome = call.result.take();
    if cancel.is_cancelled() {
        ruby.thread_check_ints()?;
    }
    // What the core logged or counted while Ruby could not be called goes out now.
    crate::logging::deliver(ruby)?;
    crate::logging::deliver_samples(ruby)?;
    match outcome {
        Some(Ok(value)) => Ok(value),
        Some(Err(panic)) => Err(crate::error::panic_error(ruby, panic.as_ref())),
        None => Err(Error::new(
            ruby.exception_runtime_error(),
            "gitlab_multistore: native call finished without a result",
        )),
    }
}
