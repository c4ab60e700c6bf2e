//! The C allocator's arena limit.
//!
//! glibc's `malloc` gives each thread that allocates its own arena, up to eight per
//! core, and memory freed into one arena is only reused by that arena. A server whose
//! work moves between tokio's workers and its blocking pool spreads its heap over
//! many arenas and keeps every one of them large: with 1,000 agents connected, the
//! server's resident memory per agent halves when the arenas are limited to one per
//! core (docs/benchmarks.md). So unless the operator chose a limit
//! (`MALLOC_ARENA_MAX` or `GLIBC_TUNABLES=glibc.malloc.arena_max=N`, which glibc reads
//! itself), the server sets it to the number of cores (at least 2) before it starts a
//! thread. Other C libraries (musl) have no arenas, and nothing is done there.

/// Limit glibc's arenas unless the environment already does; call first thing in
/// `main`, while the process has one thread. Returns the limit set, if any.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn limit_arenas() -> Option<usize> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let tunables = std::env::var("GLIBC_TUNABLES").ok();
    let arenas = arena_limit(
        std::env::var_os("MALLOC_ARENA_MAX").is_some(),
        tunables.as_deref(),
        cores,
    )?;
    let value = libc::c_int::try_from(arenas).unwrap_or(libc::c_int::MAX);
    // SAFETY: `mallopt` only records an allocator parameter (glibc takes its own lock);
    // it reads and writes no memory of ours, and arenas made later obey it.
    let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, value) } == 1;
    ok.then_some(arenas)
}

/// The limit to set: none when the operator set one, else one arena per core (at
/// least 2).
#[cfg(any(test, all(target_os = "linux", target_env = "gnu")))]
fn arena_limit(env_set: bool, tunables: Option<&str>, cores: usize) -> Option<usize> {
    let in_tunables = tunables.is_some_and(|t| {
        t.split(':')
            .any(|kv| kv.starts_with("glibc.malloc.arena_max="))
    });
    (!env_set && !in_tunables).then_some(cores.max(2))
}

/// Not glibc: nothing to limit.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn limit_arenas() -> Option<usize> {
    None
}

#[cfg(test)]
mod tests {
    use super::arena_limit;

    #[test]
    fn the_operators_choice_wins_and_the_default_is_one_arena_per_core() {
        assert_eq!(arena_limit(false, None, 2), Some(2));
        assert_eq!(arena_limit(false, None, 1), Some(2));
        assert_eq!(arena_limit(false, None, 16), Some(16));
        assert_eq!(arena_limit(true, None, 16), None);
        assert_eq!(
            arena_limit(
                false,
                Some("glibc.malloc.tcache_count=0:glibc.malloc.arena_max=4"),
                16
            ),
            None
        );
        assert_eq!(
            arena_limit(false, Some("glibc.malloc.tcache_count=0"), 8),
            Some(8)
        );
    }
}
