//! The thread pool the model computes on.

/// The thread pool the model computes on: one thread per available core. Code that drives
/// the model runs *inside* it (`compute_pool().install(..)`): a driver outside the pool would
/// be a third thread on two cores, and rayon's idle workers yield-spinning against it cost a
/// third of every CPU step (measured with perf: `sched_yield` and context switches).
pub fn compute_pool() -> &'static rayon::ThreadPool {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(available_cores())
            .thread_name(|i| format!("ferrolm-compute-{i}"))
            .build()
            .expect("building the compute thread pool")
    })
}

/// Threads the machine really offers this process (cgroup quota and affinity aware).
pub fn available_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// While held, the compute pool's other workers poll for work instead of going to sleep: a
/// parallel region that starts more than a few microseconds after the last one otherwise
/// pays a futex wake-up (about 10 us on these VMs, measured: `rayon::join` of 2 x 1 us took
/// 2 us after a 5 us gap and 13 us after a 50 us one), and a CPU decode step has ~150 such
/// regions between its serial ops. Held for a step, as llama.cpp's threads spin between ops;
/// an idle poller yields its core to the OS (`sched_yield`), so the server's and the
/// clients' threads still run at once. Measured (Q4_K_M file, 2-core VM, interleaved): one
/// client's time per output token 7.2 -> 6.3 ms (a busy spin instead of the yield: 6.9).
pub struct WarmWorkers {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl WarmWorkers {
    /// From inside the compute pool with other workers to keep; `None` otherwise, or when
    /// they do not start polling within 200 us (busy elsewhere: a test's second engine).
    ///
    /// The pollers must be running before the step pushes any job: a poller that a worker
    /// picked up while waiting inside one of the step's jobs would sit on top of that job
    /// until the step ends, and the step would wait for the job (a deadlock, seen). So each
    /// poller says when it runs, and one that starts after this returned (its stop already
    /// set) exits at once. A poller idle for 1 ms leaves (nothing waits for one: a step that
    /// stalls, e.g. on a test's second engine, must not keep a core spinning), and after a
    /// handshake that timed out the next 64 steps do without pollers.
    pub fn start() -> Option<Self> {
        use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
        use std::sync::Arc;
        use std::time::{Duration, Instant};
        static COOLDOWN: AtomicU32 = AtomicU32::new(0);
        if COOLDOWN
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| c.checked_sub(1))
            .is_ok()
        {
            return None;
        }
        let me = rayon::current_thread_index()?;
        let others = rayon::current_num_threads()
            .checked_sub(1)
            .filter(|&n| n > 0)?;
        let stop = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicUsize::new(0));
        let (s, st) = (stop.clone(), started.clone());
        rayon::spawn_broadcast(move |ctx| {
            if ctx.index() == me || s.load(Ordering::Acquire) {
                return;
            }
            st.fetch_add(1, Ordering::AcqRel);
            // Runs the jobs the step pushes (rayon's yield_now takes them); between them the
            // core goes to any other runnable thread, else straight back here.
            let mut idle_since = Instant::now();
            while !s.load(Ordering::Acquire) {
                if rayon::yield_now() == Some(rayon::Yield::Executed) {
                    idle_since = Instant::now();
                } else if idle_since.elapsed() > Duration::from_millis(1) {
                    return;
                } else {
                    std::thread::yield_now();
                }
            }
        });
        let t = Instant::now();
        while started.load(Ordering::Acquire) < others {
            let waited = t.elapsed();
            if waited > Duration::from_micros(200) {
                stop.store(true, Ordering::Release);
                COOLDOWN.store(64, Ordering::Relaxed);
                return None;
            }
            // Spin briefly, then let a woken worker queued on this core run.
            if waited > Duration::from_micros(20) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        Some(Self { stop })
    }
}

impl Drop for WarmWorkers {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
    }
}
