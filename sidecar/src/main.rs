fn main() {
    println!("coded-sidecar: under construction");
}
