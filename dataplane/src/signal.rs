//! A one-shot, core-local broadcast: tasks wait, one call wakes them all. Used to close idle
//! keep-alive connections at once when a drain starts instead of after their idle timeout.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Debug, Default)]
pub struct Signal {
    fired: Cell<bool>,
    /// Slots of waiting tasks; `free` lists reusable slots so the table never grows past the
    /// number of tasks waiting at once.
    waiters: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl Signal {
    pub fn fire(&self) {
        self.fired.set(true);
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        self.free.borrow_mut().clear();
        for waker in waiters.into_iter().flatten() {
            waker.wake();
        }
    }

    pub fn is_fired(&self) -> bool {
        self.fired.get()
    }

    /// Resolves once `fire` has been called (immediately if it already was).
    pub fn wait(&self) -> Wait<'_> {
        Wait {
            signal: self,
            slot: None,
        }
    }

    fn register(&self, slot: &mut Option<usize>, waker: &Waker) {
        let mut waiters = self.waiters.borrow_mut();
        match *slot {
            Some(i) if i < waiters.len() => waiters[i] = Some(waker.clone()),
            _ => {
                let i = match self.free.borrow_mut().pop() {
                    Some(i) => {
                        waiters[i] = Some(waker.clone());
                        i
                    }
                    None => {
                        waiters.push(Some(waker.clone()));
                        waiters.len() - 1
                    }
                };
                *slot = Some(i);
            }
        }
    }

    fn unregister(&self, slot: usize) {
        let mut waiters = self.waiters.borrow_mut();
        if let Some(entry) = waiters.get_mut(slot)
            && entry.take().is_some()
        {
            self.free.borrow_mut().push(slot);
        }
    }
}

pub struct Wait<'a> {
    signal: &'a Signal,
    slot: Option<usize>,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.fired.get() {
            self.slot = None;
            return Poll::Ready(());
        }
        let signal = self.signal;
        signal.register(&mut self.slot, cx.waker());
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take()
            && !self.signal.fired.get()
        {
            self.signal.unregister(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future;

    #[test]
    fn wakes_every_waiter_and_reuses_slots() {
        let signal = Signal::default();
        // Many short waits that are dropped unresolved must not grow the table.
        for _ in 0..1000 {
            let mut wait = signal.wait();
            assert!(future::block_on(future::poll_once(&mut wait)).is_none());
        }
        assert!(signal.waiters.borrow().len() <= 1);

        let mut a = signal.wait();
        let mut b = signal.wait();
        assert!(future::block_on(future::poll_once(&mut a)).is_none());
        assert!(future::block_on(future::poll_once(&mut b)).is_none());
        signal.fire();
        assert!(future::block_on(future::poll_once(&mut a)).is_some());
        assert!(future::block_on(future::poll_once(&mut b)).is_some());
        assert!(future::block_on(future::poll_once(signal.wait())).is_some());
    }
}
