//! `bench-floor [2]`: the bench's floor as a process of its own, like the tools it is compared
//! with. Loads the empty program (with `2`, two distinct ones, as observer attaches its main and
//! backup programs), attaches it to `sock:inet_sock_set_state` by BTF type, says `attached`, and
//! keeps it attached until its stdin closes (or it is signalled).
use std::io::{Read as _, Write as _};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{Btf, Ebpf, programs::BtfTracePoint};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/floor"));

fn main() -> Result<()> {
    let names: &[&str] = match std::env::args().nth(1).as_deref() {
        None | Some("1") => &["observer_floor"],
        Some("2") => &["observer_floor", "observer_floor_second"],
        Some(other) => bail!("usage: bench-floor [1|2], not {other:?}"),
    };
    let mut ebpf = Ebpf::load(OBJECT).context("loading the floor's eBPF object")?;
    let btf = Btf::from_sys_fs().context("reading the kernel's BTF")?;
    // All loaded before any is attached: whoever sees one run finds every one loaded.
    for name in names {
        program(&mut ebpf, name)?
            .load("inet_sock_set_state", &btf)
            .with_context(|| format!("loading {name}"))?;
    }
    drop(btf);
    for name in names {
        program(&mut ebpf, name)?
            .attach()
            .with_context(|| format!("attaching {name}"))?;
    }
    println!("attached");
    std::io::stdout().flush()?;
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    Ok(())
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut BtfTracePoint> {
    Ok(ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("the object has no program {name}"))?
        .try_into()?)
}
