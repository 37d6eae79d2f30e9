//! Running a network round trip with the GVL released, so other Ruby threads run while this one
//! waits on Redis, and so the wait stays interruptible.
//!
//! The unblock function is Ruby's own `RUBY_UBF_IO`, as for Ruby's IO: to interrupt the thread
//! (Thread#kill, Thread#raise, Timeout, Ctrl-C) Ruby signals it, the blocked syscall returns
//! EINTR, and the core asks `interrupt_pending` whether to stop. That check takes the GVL back
//! and runs Ruby's interrupt handling (protected, so a pending exception comes back as an `Err`
//! rather than a longjmp through Rust frames); a pending exception is kept and raised once the
//! call has unwound. A custom unblock function would work too, but on Ruby 3.1 it wakes Ruby's
//! timer thread on every call: ~5 context switches per command instead of 1 (measured: 87 µs
//! vs 43 µs per SET on loopback).
//!
//! `rb_thread_call_without_gvl2` is used rather than the plain variant: the plain one checks
//! interrupts after the call and may longjmp through these Rust frames, skipping destructors.

use gitlab_multistore::CancelToken;
use magnus::{Error, Ruby};
use std::cell::RefCell;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::null_mut;

thread_local! {
    // The exception (or throw/kill) Ruby had pending when a blocked call was interrupted.
    static PENDING_INTERRUPT: RefCell<Option<Error>> = const { RefCell::new(None) };
}

/// Ruby's `RUBY_UBF_IO`: `((rb_unblock_function_t *)-1)` in ruby/thread.h, which rb-sys does
/// not export as a constant.
fn ruby_ubf_io() -> Option<unsafe extern "C" fn(*mut c_void)> {
    // SAFETY: Ruby compares the pointer against -1 and never calls it.
    unsafe { std::mem::transmute::<isize, Option<unsafe extern "C" fn(*mut c_void)>>(-1) }
}

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

unsafe extern "C" fn check_interrupts_with_gvl(_: *mut c_void) -> *mut c_void {
    // SAFETY: rb_thread_call_with_gvl runs this on a Ruby thread holding the GVL.
    let ruby = unsafe { Ruby::get_unchecked() };
    if let Err(pending) = ruby.thread_check_ints() {
        PENDING_INTERRUPT.with(|slot| *slot.borrow_mut() = Some(pending));
        return std::ptr::dangling_mut::<c_void>();
    }
    null_mut()
}

/// The core's interrupt check (see the module comment): true when Ruby has an exception to
/// raise in this thread, which is kept for `without_gvl` to raise.
fn interrupt_pending() -> bool {
    let result = catch_unwind(|| {
        // SAFETY: called from the work function, on a Ruby thread without the GVL.
        unsafe { rb_sys::rb_thread_call_with_gvl(Some(check_interrupts_with_gvl), null_mut()) }
    });
    matches!(result, Ok(ptr) if !ptr.is_null())
}

/// The token a call passes to the core.
pub fn cancel_token() -> CancelToken {
    CancelToken::with_interrupt_check(interrupt_pending)
}

/// Runs `work` without the GVL. `work` must not touch any Ruby object.
/// Tells the core's borrowed connections which Ruby thread this OS thread runs now (see
/// `borrowed::claim`): the Thread object's address, unique while that thread is referenced.
pub fn claim_borrows() {
    // SAFETY: called with the GVL held, on a Ruby thread.
    let thread = unsafe { rb_sys::rb_thread_current() };
    gitlab_multistore::transport::borrowed::claim(thread as u64);
}

pub fn without_gvl<F, R>(ruby: &Ruby, work: F) -> Result<R, Error>
where
    F: FnOnce() -> R,
{
    claim_borrows();
    let mut call = Call {
        work: Some(work),
        result: None,
    };
    loop {
        // SAFETY: `call` outlives the call; the trampoline only casts it back to its type.
        unsafe {
            rb_sys::rb_thread_call_without_gvl2(
                Some(run_call::<F, R>),
                &mut call as *mut Call<F, R> as *mut c_void,
                ruby_ubf_io(),
                null_mut(),
            );
        }
        if call.result.is_some() {
            break;
        }
        // An interrupt was already pending, so Ruby did not run the work: let Ruby handle the
        // interrupt (raising if it is an exception), then try again.
        ruby.thread_check_ints()?;
    }
    // Raise what interrupted the call before building any Ruby object: creating one would run
    // Ruby code that trips over the same pending interrupt.
    if let Some(pending) = PENDING_INTERRUPT.with(|slot| slot.borrow_mut().take()) {
        return Err(pending);
    }
    let outcome = call.result.take();
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
