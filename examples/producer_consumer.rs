//! asyncio's producer/consumer, ported: a producer and a consumer on a `JoinableQueue`; the
//! producer's `join` waits until every item it put has been taken *and* marked done.
//!
//! ```python
//! async def producer(q):
//!     for i in range(5):
//!         await asyncio.sleep(1)  # producing takes 1 sec
//!         await q.put(i)
//!         print(f'put {i} at {time.perf_counter() - start}')
//!     await q.join()  # until every item is taken out and consumed
//!
//! async def consumer(q):
//!     for i in range(5):
//!         item = await q.get()
//!         print(f'get {item} at {time.perf_counter() - start}')
//!         await asyncio.sleep(1)  # consuming takes 1 sec
//!         q.task_done()
//!         print(f'consumed {item} at {time.perf_counter() - start}')
//! ```
//!
//! Prints `put 0 at 1.00…`, `get 0 at 1.00…`, `put 1 at 2.00…`, `consumed 0 at 2.00…`,
//! `get 1 …`, … `consumed 4 at 6.00…`, `done at 6.00…`, as the Python does.

use std::time::{Duration, Instant};

use greenhub::sync::JoinableQueue;
use greenhub::{sleep, spawn};

fn main() {
    let start = Instant::now();
    let at = move || start.elapsed().as_secs_f64();
    let q = JoinableQueue::new();

    let producer = {
        let q = q.clone();
        spawn(move || {
            for i in 0..5 {
                sleep(Duration::from_secs(1)); // producing takes 1 sec
                q.put(i).expect("the queue is open");
                println!("put {i} at {}", at());
            }
            q.join().expect("the consumer finishes"); // taken out *and* consumed
        })
    };
    let consumer = {
        let q = q.clone();
        spawn(move || {
            for _ in 0..5 {
                let item = q.get().expect("the producer puts 5 items");
                println!("get {item} at {}", at());
                sleep(Duration::from_secs(1)); // consuming takes 1 sec
                q.task_done();
                println!("consumed {item} at {}", at());
            }
        })
    };
    producer.join().unwrap();
    consumer.join().unwrap();
    println!("done at {}", at());
}
