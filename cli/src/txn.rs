//! Placeholder: `concord submit`, `get` and `list` are being written.
use clap::Args;
/// Flags of `concord submit`.
#[derive(Args, Debug)]
pub struct SubmitArgs {}
/// Flags of `concord get`.
#[derive(Args, Debug)]
pub struct GetArgs {}
/// Flags of `concord list`.
#[derive(Args, Debug)]
pub struct ListArgs {}
/// Submits.
pub async fn submit(_args: SubmitArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not built yet")
}
/// Gets.
pub async fn get(_args: GetArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not built yet")
}
/// Lists.
pub async fn list(_args: ListArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not built yet")
}
