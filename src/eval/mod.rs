//! `sluice eval`: offline comparison of two versions. (Interface fixed; body to be written.)

#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {}

pub async fn run(args: EvalArgs) -> anyhow::Result<()> {
    let _ = args;
    anyhow::bail!("not yet")
}
