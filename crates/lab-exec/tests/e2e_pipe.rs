//! `pipe` between two real hypervisors of the test bed: a receiver that stalls, or one that
//! stops reading and never ends, ends the pipe at its timeout instead of hanging the run (and
//! the proto lock it holds) for ever.

use std::time::{Duration, Instant};

use lab_exec::{Cmd, ExecError, Executor, Mode, Target};

fn executor() -> Executor {
    let _bed = lab_testbed::require();
    let target = |name: &str| Target {
        name: name.to_owned(),
        ssh: name.to_owned(),
        parallel: 4,
    };
    Executor::new(Mode::Live, vec![target("hv0"), target("hv1")], 8)
}

fn pipe_into(receiver: &str) -> (Result<u64, ExecError>, Duration) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let exec = executor();
        let send =
            Cmd::query(["sh", "-c", "exec yes lab-pipe-test"]).timeout(Duration::from_secs(3));
        let recv = Cmd::change(["sh", "-c", receiver]).timeout(Duration::from_secs(3));
        let t0 = Instant::now();
        let result = exec.pipe(("hv0", &send), ("hv1", &recv), &|_| {}).await;
        let took = t0.elapsed();
        exec.close().await;
        (result, took)
    })
}

#[test]
fn a_receiver_that_stalls_ends_the_pipe_at_its_timeout() {
    // Reads nothing and never ends: the pipe fills, the sender's writes block.
    let (result, took) = pipe_into("sleep 1000");
    assert_eq!(
        result.as_ref().err().map(ExecError::host),
        Some("hv1"),
        "{result:?}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

#[test]
fn a_receiver_that_stops_reading_and_never_ends_is_bounded_too() {
    // Closes its input at once, then lingers.
    let (result, took) = pipe_into("exec 0<&-; sleep 1000");
    assert_eq!(
        result.as_ref().err().map(ExecError::host),
        Some("hv1"),
        "{result:?}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
}
