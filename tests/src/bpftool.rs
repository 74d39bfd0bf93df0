//! The kernel's own view of observer's maps, through `bpftool` (JSON): what a test reads and,
//! to make a loss the kernel would make, writes.
use serde_json::Value;

use crate::{observer::programs_of, output_of, try_output_of};

fn json(args: &[&str]) -> Value {
    try_json(args).unwrap_or_else(|e| panic!("{e}"))
}

/// What `bpftool -j ARGS` prints, parsed; Err when it fails or prints no JSON.
pub fn try_json(args: &[&str]) -> Result<Value, String> {
    let mut all = vec!["-j"];
    all.extend_from_slice(args);
    let out = try_output_of("bpftool", &all)?;
    serde_json::from_slice(&out).map_err(|e| format!("bpftool {args:?}: not JSON: {e}"))
}

/// The ID of the map called `name` of the observer running as `pid`.
pub fn map_of(pid: u32, name: &str) -> u64 {
    for prog in programs_of(pid) {
        let info = json(&["prog", "show", "id", &prog.to_string()]);
        for id in map_ids(&info) {
            if json(&["map", "show", "id", &id.to_string()])["name"] == name {
                return id;
            }
        }
    }
    panic!("observer {pid} has no {name} map");
}

/// The maps a program uses, from `bpftool prog show`.
pub fn map_ids(prog: &Value) -> Vec<u64> {
    prog["map_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .collect()
}

/// A map's key or value, as bpftool writes it (`["0x2a", ...]`).
fn bytes(v: &Value) -> Vec<u8> {
    v.as_array()
        .expect("bytes")
        .iter()
        .map(|b| {
            let hex = b.as_str().expect("a byte").trim_start_matches("0x");
            u8::from_str_radix(hex, 16).expect("a hex byte")
        })
        .collect()
}

/// Bytes as bpftool takes them on its command line.
fn args(bytes: &[u8]) -> Vec<String> {
    bytes.iter().map(|b| format!("0x{b:02x}")).collect()
}

/// Every (key, value) of a map.
pub fn map_entries(map: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
    entries(&json(&["map", "dump", "id", &map.to_string()]))
}

fn entries(dump: &Value) -> Vec<(Vec<u8>, Vec<u8>)> {
    dump.as_array()
        .expect("entries")
        .iter()
        .map(|e| (bytes(&e["key"]), bytes(&e["value"])))
        .collect()
}

/// Sets element `index` of the u32 array map `map`; returns what it held.
pub fn set_u32(map: u64, index: u32, value: u32) -> u32 {
    let id = map.to_string();
    let key = args(&index.to_le_bytes());
    let mut lookup = vec!["map", "lookup", "id", &id, "key"];
    lookup.extend(key.iter().map(String::as_str));
    let old = bytes(&json(&lookup)["value"]);
    put(map, &index.to_le_bytes(), &value.to_le_bytes());
    u32::from_le_bytes(old.try_into().expect("a u32"))
}

/// Puts (key, value), as bytes, into map `map` (created or replaced).
pub fn put(map: u64, key: &[u8], value: &[u8]) {
    let id = map.to_string();
    let (key, value) = (args(key), args(value));
    let mut update = vec!["map", "update", "id", &id, "key"];
    update.extend(key.iter().map(String::as_str));
    update.push("value");
    update.extend(value.iter().map(String::as_str));
    output_of("bpftool", &update);
}

/// A map's name, as the kernel holds it.
pub fn map_name(map: u64) -> String {
    json(&["map", "show", "id", &map.to_string()])["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A program's name, as the kernel holds it.
pub fn program_name(prog: u64) -> String {
    json(&["prog", "show", "id", &prog.to_string()])["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_map_dump() {
        let dump: Value = serde_json::from_str(
            r#"[{"key":["0x01","0x00"],"value":["0xff","0x10","0x00"]},{"key":["0x02","0x00"],"value":["0x00","0x00","0x00"]}]"#,
        )
        .unwrap();
        assert_eq!(
            entries(&dump),
            vec![
                (vec![1, 0], vec![0xff, 0x10, 0]),
                (vec![2, 0], vec![0, 0, 0])
            ]
        );
        assert_eq!(args(&[1, 0xab]), ["0x01", "0xab"]);
    }

    #[test]
    fn reads_a_programs_maps() {
        let prog: Value =
            serde_json::from_str(r#"{"id":7,"name":"observer_main","map_ids":[3,9]}"#).unwrap();
        assert_eq!(map_ids(&prog), [3, 9]);
        assert!(map_ids(&serde_json::json!({"id": 8})).is_empty());
    }
}
