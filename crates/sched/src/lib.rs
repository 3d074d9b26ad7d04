//! weft-sched: an M:N scheduler of stackful green threads (weft fibers) over a few worker OS
//! threads, with work stealing, a timer heap, idle sleep until the next deadline, an I/O reactor,
//! a `block_on` bridge for futures, and preemption hooks.
//!
//! ```
//! use std::time::Duration;
//! use weft_sched::{Runtime, channel, sleep, spawn};
//!
//! let rt = Runtime::builder().workers(2).build().unwrap();
//! let total = rt
//!     .spawn(|| {
//!         let (tx, rx) = channel::<u32>(4);
//!         let producer = spawn(move || {
//!             for i in 1..=10 {
//!                 tx.send(i).unwrap(); // parks this green thread while the channel is full
//!             }
//!         });
//!         sleep(Duration::from_millis(1)); // parks; the worker runs other green threads
//!         let sum: u32 = rx.iter().sum();
//!         producer.join().unwrap();
//!         sum
//!     })
//!     .join() // blocks this (non-green) thread
//!     .unwrap();
//! assert_eq!(total, 55);
//! ```
//!
//! See the crate README for the design and its invariants.

#![warn(missing_docs)]

mod bridge;
pub mod channel;
mod context;
mod driver;
#[cfg(feature = "hyper")]
pub mod hyper_rt;
mod net;
mod preempt;
mod runtime;
mod sync;
mod task;
mod timer;

use weft_fiber as fiber;

pub use bridge::block_on;
pub use channel::{
    Receiver, RecvError, RecvFuture, SendError, SendFuture, Sender, TryRecvError, TrySendError,
    channel, unbounded,
};
pub use net::{TcpListener, TcpStream};
pub use preempt::Ticker;
pub use runtime::{
    Builder, EnterGuard, Handle, Metrics, Runtime, consume_budget, should_yield, spawn,
    yield_if_needed,
};
pub use task::{
    JoinError, JoinHandle, TaskHandle, TaskId, current, in_green_thread, park, try_current,
    yield_now,
};
pub use timer::{Sleep, sleep, sleep_until};

// The README's example runs as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// Default usable stack size of a green thread.
pub const DEFAULT_STACK_SIZE: usize = fiber::Stack::DEFAULT_SIZE;
