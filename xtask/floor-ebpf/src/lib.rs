#![no_std]
// The program is the binary target (src/main.rs); this empty library lets the loader's build
// script declare a build-dependency on this crate, so that cargo rebuilds it when it changes.
