//! The man page and shell completions, made from the command-line definition itself (as ripgrep
//! does with `--generate`), so that what a package ships cannot drift from the flags the binary
//! takes. `cargo xtask dist` runs the built binary with `--generate KIND` for each.
use std::io::Write;

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;
use clap_complete::Shell;

use crate::cli::{Cli, Generate};

pub fn write(kind: Generate, out: &mut impl Write) -> Result<()> {
    let mut cmd = Cli::command();
    let shell = match kind {
        Generate::Man => {
            return clap_mangen::Man::new(cmd)
                .render(out)
                .context("writing the man page");
        }
        Generate::CompleteBash => Shell::Bash,
        Generate::CompleteZsh => Shell::Zsh,
        Generate::CompleteFish => Shell::Fish,
    };
    clap_complete::generate(shell, &mut cmd, "observer", out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(kind: Generate) -> String {
        let mut out = Vec::new();
        write(kind, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_man_page_names_every_public_flag() {
        let man = text(Generate::Man);
        assert!(
            man.starts_with(".ie") || man.contains(".TH observer"),
            "{man}"
        );
        for flag in [
            "port",
            "pid",
            "cgroup",
            "remote\\-port",
            "events",
            "metrics\\-addr",
        ] {
            assert!(man.contains(&format!("\\-\\-{flag}")), "--{flag} missing");
        }
        // Packagers' flag: not a user's.
        assert!(!man.contains("generate"), "{man}");
    }

    #[test]
    fn completions_complete_the_flags() {
        for kind in [
            Generate::CompleteBash,
            Generate::CompleteZsh,
            Generate::CompleteFish,
        ] {
            let script = text(kind);
            // clap_complete lists hidden flags too: --generate completes, harmlessly.
            assert!(script.contains("remote-port"), "{kind:?}: {script}");
        }
    }
}
