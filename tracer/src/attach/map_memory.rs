//! What the kernel maps will take, estimated before they are created: from each map's
//! definition in the eBPF object (type, key and value sizes, flags) and the entries the flags
//! give it, with the kernel's own arithmetic (`htab_map_mem_usage`, `array_map_mem_usage`,
//! checked against the `memlock` of `/proc/PID/fdinfo` on 6.18). Two figures: what the maps
//! take as soon as they are created (preallocated maps, hash buckets, arrays), and what they
//! take at most, once every map without preallocation is full too (each element a kmalloc
//! object of its size class).

/// `BPF_F_NO_PREALLOC`: the map's elements are allocated as they are inserted.
const NO_PREALLOC: u32 = 1;
const PAGE: u64 = 4096;
/// The kernel's `struct htab_elem` before the key (x86-64).
const HTAB_ELEM: u64 = 48;
/// A hash map's bucket (`struct bucket`).
const BUCKET: u64 = 16;
/// What every map costs besides its elements (the map structure itself, rounded up).
const MAP_BASE: u64 = 1024;

/// The kernel map types leaktracer's object uses (`enum bpf_map_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    Hash,
    PerCpuHash,
    LruHash,
    LruPerCpuHash,
    Array,
    PerCpuArray,
    RingBuf,
    Other,
}

impl MapKind {
    /// From `bpf_map_type`'s number.
    pub fn from_type(map_type: u32) -> Self {
        match map_type {
            1 => Self::Hash,
            2 => Self::Array,
            5 => Self::PerCpuHash,
            6 => Self::PerCpuArray,
            9 => Self::LruHash,
            10 => Self::LruPerCpuHash,
            27 => Self::RingBuf,
            _ => Self::Other,
        }
    }
}

/// One map as it will be created.
#[derive(Clone, Debug)]
pub struct MapShape {
    pub name: String,
    pub kind: MapKind,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

/// One map's share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapCost {
    pub name: String,
    pub at_load: u64,
    pub at_most: u64,
}

/// The maps' memory: every map's, and the totals.
#[derive(Clone, Debug, Default)]
pub struct MapMemory {
    /// Taken as soon as the maps are created.
    pub at_load: u64,
    /// Taken at most, once every map is full.
    pub at_most: u64,
    /// Each map, the largest (at most) first.
    pub maps: Vec<MapCost>,
}

fn round8(n: u32) -> u64 {
    u64::from(n).div_ceil(8) * 8
}

/// The kmalloc size class an object of `size` bytes takes.
fn kmalloc_size(size: u64) -> u64 {
    const CLASSES: [u64; 13] = [
        8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192,
    ];
    CLASSES
        .iter()
        .copied()
        .find(|class| size <= *class)
        .unwrap_or_else(|| size.div_ceil(PAGE).next_power_of_two() * PAGE)
}

/// What one map takes: (at load, at most), with `cpus` possible CPUs.
pub fn cost(map: &MapShape, cpus: u64) -> (u64, u64) {
    let entries = u64::from(map.max_entries);
    let value = round8(map.value_size);
    match map.kind {
        MapKind::Hash | MapKind::PerCpuHash | MapKind::LruHash | MapKind::LruPerCpuHash => {
            let percpu = matches!(map.kind, MapKind::PerCpuHash | MapKind::LruPerCpuHash);
            let lru = matches!(map.kind, MapKind::LruHash | MapKind::LruPerCpuHash);
            let element = HTAB_ELEM + round8(map.key_size) + if percpu { 8 } else { value };
            let buckets = entries.next_power_of_two() * BUCKET;
            let base = MAP_BASE + buckets;
            // LRU maps are always preallocated.
            if lru || map.flags & NO_PREALLOC == 0 {
                // A plain hash keeps one spare element per CPU.
                let spare = if lru || percpu { 0 } else { cpus };
                let mut total = base + element * (entries + spare);
                if percpu {
                    total += value * cpus * entries;
                }
                (total, total)
            } else {
                // Each element a kmalloc object, with the free list's node.
                let full = kmalloc_size(element + 8) * entries;
                (base, base + full)
            }
        }
        MapKind::Array => {
            let bytes = (value * entries).div_ceil(PAGE) * PAGE;
            (MAP_BASE + bytes, MAP_BASE + bytes)
        }
        MapKind::PerCpuArray => {
            let bytes = entries * 8 + value * entries * cpus;
            (MAP_BASE + bytes, MAP_BASE + bytes)
        }
        MapKind::RingBuf => {
            // The data pages, and the consumer's and producer's pages.
            let bytes = entries + 2 * PAGE;
            (MAP_BASE + bytes, MAP_BASE + bytes)
        }
        MapKind::Other => {
            let bytes = (round8(map.key_size) + value) * entries;
            (MAP_BASE + bytes, MAP_BASE + bytes)
        }
    }
}

/// What `maps` take, with `cpus` possible CPUs.
pub fn estimate(maps: &[MapShape], cpus: u64) -> MapMemory {
    let mut memory = MapMemory::default();
    for map in maps {
        let (at_load, at_most) = cost(map, cpus);
        memory.at_load += at_load;
        memory.at_most += at_most;
        memory.maps.push(MapCost {
            name: map.name.clone(),
            at_load,
            at_most,
        });
    }
    memory
        .maps
        .sort_by(|a, b| b.at_most.cmp(&a.at_most).then(a.name.cmp(&b.name)));
    memory
}

/// The CPUs the kernel may bring up (`/sys/devices/system/cpu/possible`, e.g. `0-3,6`): a
/// per-CPU map has a copy for each.
pub fn possible_cpus() -> u64 {
    let parsed = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|text| {
            text.trim()
                .split(',')
                .map(|range| match range.split_once('-') {
                    Some((first, last)) => {
                        Some(last.parse::<u64>().ok()? - first.parse::<u64>().ok()? + 1)
                    }
                    None => range.parse::<u64>().ok().map(|_| 1),
                })
                .sum::<Option<u64>>()
        });
    parsed
        .or_else(|| {
            std::thread::available_parallelism()
                .ok()
                .map(|n| n.get() as u64)
        })
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(kind: MapKind, key: u32, value: u32, entries: u32, flags: u32) -> MapShape {
        MapShape {
            name: "M".into(),
            kind,
            key_size: key,
            value_size: value,
            max_entries: entries,
            flags,
        }
    }

    /// Within 1% of what the kernel (6.18, two possible CPUs) said in `memlock` for the maps
    /// of a trace at the default sizes.
    #[test]
    fn costs_are_the_kernel_s_own_figures() {
        let near = |estimate: u64, kernel: u64| {
            assert!(
                estimate.abs_diff(kernel) * 100 <= kernel,
                "{estimate} vs the kernel's {kernel}"
            );
        };
        // STACK_STATS: preallocated hash, 4 x 65536 entries.
        near(
            cost(&shape(MapKind::Hash, 16, 16, 262_144, 0), 2).0,
            25_166_896,
        );
        // ALLOCS and STACKS empty: their buckets only.
        let allocs = cost(&shape(MapKind::Hash, 16, 32, 786_432, NO_PREALLOC), 2);
        near(allocs.0, 16_778_112);
        // Full: 786432 elements of 104 bytes, each in kmalloc-128.
        assert_eq!(allocs.1 - allocs.0, 786_432 * 128);
        let stacks = cost(&shape(MapKind::Hash, 8, 1024, 65_536, NO_PREALLOC), 2);
        near(stacks.0, 1_049_472);
        assert_eq!(stacks.1 - stacks.0, 65_536 * 2048);
        // The record table: a mmapable array of 48-byte slots.
        near(
            cost(&shape(MapKind::Array, 4, 48, 262_144, 0x400), 2).0,
            12_587_008,
        );
        // LRU hashes.
        near(cost(&shape(MapKind::LruHash, 4, 8, 4096, 0), 2).0, 328_576);
        near(
            cost(&shape(MapKind::LruHash, 4, 136, 4096, 0), 2).0,
            852_864,
        );
    }

    #[test]
    fn the_largest_maps_come_first() {
        let mut big = shape(MapKind::Hash, 16, 16, 80_000_000, 0);
        big.name = "STACK_STATS".into();
        let small = shape(MapKind::Array, 4, 4, 1, 0);
        let memory = estimate(&[small, big], 2);
        assert_eq!(memory.maps[0].name, "STACK_STATS");
        // 80M elements of 80 bytes, 128Mi buckets of 16.
        assert!(memory.at_load > 80_000_000 * 80 + (1 << 27) * 16);
        assert_eq!(memory.at_load, memory.at_most);
    }

    #[test]
    fn possible_cpus_are_counted_from_their_ranges() {
        assert!(possible_cpus() >= 1);
        assert_eq!(kmalloc_size(104), 128);
        assert_eq!(kmalloc_size(1088), 2048);
        assert_eq!(kmalloc_size(9000), 16384);
    }
}
