//! Bench-only programs for `bench/run.sh`: bare servers of each framework (no manager, no
//! middleware) as baselines, and `scale`, which starts N managed servers. Nothing here ships.
