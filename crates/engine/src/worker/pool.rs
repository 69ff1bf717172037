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
