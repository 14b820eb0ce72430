//! The slot through which a shard answers one request, to a blocked thread or
//! to a future.

use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::thread::{self, Thread};

use crate::error::{Error, Result};

enum Waiter {
    None,
    Thread(Thread),
    Task(Waker),
}

enum State<T> {
    Pending(Waiter),
    Done(Result<T>),
    Taken,
}

/// A one-shot answer. The shard completes it once; the caller takes it once.
pub struct Ack<T> {
    state: Mutex<State<T>>,
}

impl<T> Default for Ack<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Ack<T> {
    /// A pending slot.
    pub fn new() -> Self {
        Ack {
            state: Mutex::new(State::Pending(Waiter::None)),
        }
    }

    /// Completes the slot and wakes its waiter. The wake happens outside the lock.
    pub fn complete(&self, result: Result<T>) {
        let waiter = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            match std::mem::replace(&mut *state, State::Done(result)) {
                State::Pending(w) => w,
                State::Done(_) | State::Taken => unreachable!("an ack is completed once"),
            }
        };
        match waiter {
            Waiter::None => {}
            Waiter::Thread(t) => t.unpark(),
            Waiter::Task(w) => w.wake(),
        }
    }

    /// Blocks the calling thread until the slot is completed.
    pub fn wait(&self) -> Result<T> {
        loop {
            {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                match std::mem::replace(&mut *state, State::Taken) {
                    State::Done(r) => return r,
                    State::Pending(_) => *state = State::Pending(Waiter::Thread(thread::current())),
                    State::Taken => unreachable!("an ack is taken once"),
                }
            }
            thread::park();
        }
    }

    /// Blocks the calling thread until the slot is completed or `timeout`
    /// passes (`None`: still pending; the slot can be waited on again).
    pub fn wait_timeout(&self, timeout: std::time::Duration) -> Option<Result<T>> {
        let Some(deadline) = std::time::Instant::now().checked_add(timeout) else {
            // Longer than the clock can count: no deadline.
            return Some(self.wait());
        };
        loop {
            {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                match std::mem::replace(&mut *state, State::Taken) {
                    State::Done(r) => return Some(r),
                    State::Pending(_) => *state = State::Pending(Waiter::Thread(thread::current())),
                    State::Taken => unreachable!("an ack is taken once"),
                }
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return None;
            }
            thread::park_timeout(deadline - now);
        }
    }

    /// Polls the slot from a future.
    pub fn poll(&self, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match std::mem::replace(&mut *state, State::Taken) {
            State::Done(r) => Poll::Ready(r),
            State::Pending(_) => {
                *state = State::Pending(Waiter::Task(cx.waker().clone()));
                Poll::Pending
            }
            State::Taken => Poll::Ready(Err(Error::Closed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn completes_a_blocked_thread() {
        let ack = Arc::new(Ack::<u32>::new());
        let a = ack.clone();
        let t = std::thread::spawn(move || a.wait());
        std::thread::sleep(std::time::Duration::from_millis(10));
        ack.complete(Ok(7));
        assert_eq!(t.join().unwrap().unwrap(), 7);
    }

    #[test]
    fn a_timed_wait_gives_up_and_can_wait_again() {
        let ack = Arc::new(Ack::<u32>::new());
        assert!(ack
            .wait_timeout(std::time::Duration::from_millis(5))
            .is_none());
        let done = Ack::<u32>::new();
        done.complete(Ok(1));
        assert_eq!(
            done.wait_timeout(std::time::Duration::MAX)
                .unwrap()
                .unwrap(),
            1
        );
        let a = ack.clone();
        let t = std::thread::spawn(move || a.wait_timeout(std::time::Duration::from_secs(60)));
        std::thread::sleep(std::time::Duration::from_millis(10));
        ack.complete(Ok(3));
        assert_eq!(t.join().unwrap().unwrap().unwrap(), 3);
    }

    #[test]
    fn completed_before_wait() {
        let ack = Ack::<u32>::new();
        ack.complete(Err(Error::Closed));
        assert!(matches!(ack.wait(), Err(Error::Closed)));
    }
}
