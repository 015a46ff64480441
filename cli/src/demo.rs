//! Placeholder: `concord demo` is being written.
use clap::Args;
/// Flags of `concord demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {}
/// Runs the demo.
pub async fn run(_args: DemoArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not built yet")
}
