//! Ending a hook with everything it started: a hook runs as the leader of a process
//! group of its own, and a hook that runs too long is killed with its whole group (a
//! shell script's `curl` included). The standard library signals a single process
//! only, hence the one `unsafe` call here.

/// Sends SIGKILL to the process group `leader` leads. An already empty group is fine.
pub fn kill(leader: u32) {
    let Ok(pgid) = libc::pid_t::try_from(leader) else {
        return;
    };
    if pgid <= 1 {
        // 0 and 1 would name our own group or every process: never.
        return;
    }
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; a negative
    // pid names the process group, which `pgid > 1` makes a group of a child we
    // started with its own group (`process_group(0)`), never ours or init's.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}
