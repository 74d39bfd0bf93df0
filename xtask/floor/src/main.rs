//! `bench-floor`: the bench's floor as a process of its own, like the tools it is compared
//! with. Loads the empty program, attaches it to `sock:inet_sock_set_state` by BTF type, says
//! `attached`, and keeps it attached until its stdin closes (or it is signalled).
use std::io::{Read as _, Write as _};

use anyhow::{Context as _, Result, anyhow};
use aya::{Btf, Ebpf, programs::BtfTracePoint};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/floor"));

fn main() -> Result<()> {
    let mut ebpf = Ebpf::load(OBJECT).context("loading the floor's eBPF object")?;
    let btf = Btf::from_sys_fs().context("reading the kernel's BTF")?;
    let program: &mut BtfTracePoint = ebpf
        .program_mut("observer_floor")
        .ok_or_else(|| anyhow!("the object has no program observer_floor"))?
        .try_into()?;
    program
        .load("inet_sock_set_state", &btf)
        .context("loading observer_floor")?;
    drop(btf);
    program.attach().context("attaching observer_floor")?;
    println!("attached");
    std::io::stdout().flush()?;
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    Ok(())
}
