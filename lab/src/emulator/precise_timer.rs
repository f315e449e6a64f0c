//! A dedicated timer thread that wakes async tasks at precise `Instant` deadlines.
//!
//! Tokio's timer wheel has a 1 ms resolution and rounds deadlines up, so a 2 ms
//! `tokio::time::sleep` lasts 2-3 ms. This timer keeps deadlines in a heap and waits on
//! a condition variable with the exact remaining time (a futex with an hrtimer on
//! Linux), so wake-ups land within tens of microseconds while the thread sleeps
//! between deadlines instead of spinning. Its CPU cost is one thread wake-up per
//! deadline; see `examples/timer_accuracy.rs` for the measurement.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::oneshot;

/// Handle to the timer thread; dropping the last handle stops the thread.
#[derive(Debug, Clone)]
pub struct PreciseTimer {
    owner: Arc<TimerThread>,
}

#[derive(Debug)]
struct TimerThread {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct State {
    heap: BinaryHeap<Reverse<Entry>>,
    next_sequence: u64,
    shutdown: bool,
}

#[derive(Debug)]
struct Entry {
    deadline: Instant,
    sequence: u64,
    sender: oneshot::Sender<()>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.deadline, self.sequence) == (other.deadline, other.sequence)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.deadline, self.sequence).cmp(&(other.deadline, other.sequence))
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl PreciseTimer {
    /// Starts the timer thread.
    pub fn start() -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("precise-timer".to_owned())
            .spawn(move || run(&thread_shared))?;
        Ok(Self {
            owner: Arc::new(TimerThread {
                shared,
                thread: Some(thread),
            }),
        })
    }

    /// Completes at `deadline` (or right away if it has passed, or if the timer stops).
    pub fn sleep_until(&self, deadline: Instant) -> impl std::future::Future<Output = ()> + Send {
        let (sender, receiver) = oneshot::channel();
        let shared = &self.owner.shared;
        let mut state = shared.lock();
        let sequence = state.next_sequence;
        state.next_sequence += 1;
        let is_earliest = state
            .heap
            .peek()
            .is_none_or(|Reverse(top)| deadline < top.deadline);
        state.heap.push(Reverse(Entry {
            deadline,
            sequence,
            sender,
        }));
        drop(state);
        if is_earliest {
            shared.wake.notify_one();
        }
        async move {
            // An error only means the timer thread stopped; waking early is then fine.
            let _ = receiver.await;
        }
    }
}

impl Drop for TimerThread {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::warn!("precise timer thread panicked");
            }
        }
    }
}

fn run(shared: &Shared) {
    let mut state = shared.lock();
    loop {
        if state.shutdown {
            return;
        }
        let now = Instant::now();
        while state
            .heap
            .peek()
            .is_some_and(|Reverse(top)| top.deadline <= now)
        {
            if let Some(Reverse(entry)) = state.heap.pop() {
                // The sleeper may have been cancelled; nothing to do then.
                let _ = entry.sender.send(());
            }
        }
        let next_deadline = state.heap.peek().map(|Reverse(top)| top.deadline);
        state = match next_deadline {
            None => shared
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner),
            Some(deadline) => {
                let timeout = deadline.saturating_duration_since(now);
                shared
                    .wake
                    .wait_timeout(state, timeout)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn wakes_in_deadline_order_and_not_early() {
        let timer = PreciseTimer::start().unwrap();
        let start = Instant::now();
        let late = timer.sleep_until(start + Duration::from_millis(6));
        let early = timer.sleep_until(start + Duration::from_millis(3));
        early.await;
        let early_elapsed = start.elapsed();
        late.await;
        let late_elapsed = start.elapsed();
        assert!(early_elapsed >= Duration::from_millis(3));
        assert!(late_elapsed >= Duration::from_millis(6));
        assert!(early_elapsed < late_elapsed);
    }

    #[tokio::test]
    async fn stops_when_dropped() {
        let timer = PreciseTimer::start().unwrap();
        let sleeper = timer.sleep_until(Instant::now() + Duration::from_secs(3600));
        drop(timer);
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .unwrap();
    }
}
