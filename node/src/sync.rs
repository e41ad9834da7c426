//! Single-threaded wake-up primitives for tasks of one shard: a level-triggered notify
//! (the Ready loop's doorbell) and a one-shot slot (a client waiting for its reply).
//! Nothing here is `Send`: a shard's tasks all run on its own executor.

use std::cell::{Cell, RefCell};
use std::future::{Future, poll_fn};
use std::task::{Poll, Waker};

/// A doorbell: `notify` sets it and wakes the waiter; `wait` resolves once it is set
/// and clears it. Many notifications before a wait collapse into one.
#[derive(Debug, Default)]
pub struct Notify {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    pub fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        poll_fn(move |cx| {
            if self.set.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }
}

/// A value delivered once, awaited once.
#[derive(Debug)]
pub struct Slot<T> {
    value: RefCell<Option<T>>,
    waker: RefCell<Option<Waker>>,
}

impl<T> Default for Slot<T> {
    fn default() -> Slot<T> {
        Slot { value: RefCell::new(None), waker: RefCell::new(None) }
    }
}

impl<T> Slot<T> {
    /// Delivers `v` (a second delivery is ignored: the first answer stands).
    pub fn fill(&self, v: T) {
        let mut value = self.value.borrow_mut();
        if value.is_none() {
            *value = Some(v);
            drop(value);
            if let Some(w) = self.waker.borrow_mut().take() {
                w.wake();
            }
        }
    }

    pub fn is_filled(&self) -> bool {
        self.value.borrow().is_some()
    }

    pub fn take(&self) -> impl Future<Output = T> + '_ {
        poll_fn(move |cx| match self.value.borrow_mut().take() {
            Some(v) => Poll::Ready(v),
            None => {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;
    use std::task::{Context, Wake};

    struct Flag(std::sync::atomic::AtomicUsize);
    impl Wake for Flag {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn notify_collapses_and_wakes() {
        let n = Notify::default();
        let flag = std::sync::Arc::new(Flag(0.into()));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        {
            let mut w = pin!(n.wait());
            assert!(w.as_mut().poll(&mut cx).is_pending());
            n.notify();
            n.notify();
            assert_eq!(flag.0.load(std::sync::atomic::Ordering::SeqCst), 1, "one wake for the registered waiter");
            assert!(w.as_mut().poll(&mut cx).is_ready());
        }
        let mut w = pin!(n.wait());
        assert!(w.as_mut().poll(&mut cx).is_pending(), "both notifications were consumed by one wait");
    }

    #[test]
    fn slot_delivers_the_first_value_once() {
        let s: Slot<u32> = Slot::default();
        let flag = std::sync::Arc::new(Flag(0.into()));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let mut t = pin!(s.take());
        assert!(t.as_mut().poll(&mut cx).is_pending());
        s.fill(7);
        s.fill(8);
        assert_eq!(t.as_mut().poll(&mut cx), Poll::Ready(7));
    }
}
