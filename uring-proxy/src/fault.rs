//! Faults on purpose, compiled only with the `fault-injection` feature (the test build):
//! an outbound connection to port 1 panics its worker, one to port 2 blocks its worker's
//! thread for 3 seconds. The tests use them to prove that a dead worker takes the process
//! down and a stalled one makes it not live.

use ringmesh_core::OrigDst;

pub(crate) const PANIC_PORT: u16 = 1;
pub(crate) const STALL_PORT: u16 = 2;

pub(crate) fn on_outbound(dst: OrigDst) {
    match dst.addr().port() {
        PANIC_PORT => panic!("fault injection: panic on a connection to {dst}"),
        STALL_PORT => std::thread::sleep(std::time::Duration::from_secs(3)),
        _ => {}
    }
}
