//! Benchmarks live in `benches/`; scripts for side-by-side runs with peer
//! servers live in `scripts/`. This library holds the sample frames they share.
