//! `zap-init`: PID 1 of a Zap pod. Started by `zap run` (see `zap_engine::pod::init`); not meant
//! to be run by hand.
fn main() {
    std::process::exit(zap_engine::pod::init::main());
}
