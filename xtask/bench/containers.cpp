// Benchmark workload, realistic: build and drop maps of strings to vectors, as programs do.
// Prints "ready", waits for a line on stdin, runs ROUNDS rounds, and prints "ns_per_op X" per
// inserted element (each insert allocates a map node, a string and a vector).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

int main(int argc, char **argv) {
    long rounds = argc > 1 ? std::atol(argv[1]) : 200;
    std::printf("ready\n");
    std::fflush(stdout);
    char line[16];
    if (!std::fgets(line, sizeof line, stdin)) return 1;
    const int per_round = 500;
    auto start = std::chrono::steady_clock::now();
    std::size_t checksum = 0;
    for (long r = 0; r < rounds; r++) {
        std::map<std::string, std::vector<int>> index;
        for (int i = 0; i < per_round; i++) {
            index["key-number-" + std::to_string(i * 7919 % 100003)].assign(1 + i % 37, i);
        }
        checksum += index.size();
    }
    auto ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count();
    std::printf("ns_per_op %.2f\n", ns / (rounds * per_round));
    return checksum == 0;
}
