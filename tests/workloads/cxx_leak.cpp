// C++ workload: leaks through operator new and new[], with namespaces and overloads so frame
// names must come back demangled. Exits by itself.
//   add_node:    50 x new Node (200 B each)           = 10000 B
//   make_array:  50 x new int[25] (100 B each)         =  5000 B
//   balanced:    a std::vector and std::string built and destroyed
#include <cstdio>
#include <string>
#include <vector>

namespace shop {
struct Node {
    char payload[200];
};

static Node *volatile last_node;
static int *volatile last_array;

__attribute__((noinline)) void add_node(int i) {
    last_node = new Node{};
    last_node->payload[0] = static_cast<char>(i);
}

__attribute__((noinline)) void make_array(int n) { last_array = new int[n]; }

__attribute__((noinline)) std::size_t balanced(int i) {
    std::vector<std::string> names;
    for (int k = 0; k < 20; k++) names.push_back(std::to_string(i * k) + " a string too long for SSO");
    return names.size();
}
}  // namespace shop

int main() {
    std::size_t total = 0;
    for (int i = 0; i < 50; i++) {
        shop::add_node(i);
        shop::make_array(25);
        total += shop::balanced(i);
    }
    std::printf("%zu\n", total);
    return 0;
}
