use caching_diesel::Cached;

#[derive(Cached)]
union Bits {
    id: i32,
    raw: u32,
}

fn main() {}
