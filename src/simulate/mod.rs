//! `sluice simulate`: the real judge and state machine against seeded synthetic traffic.
//! (Interface fixed; bodies to be written.)

#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {}

pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let _ = args;
    anyhow::bail!("not yet")
}
