// A Go program: no C library, no malloc, every byte mapped by the runtime or by syscall.Mmap
// (the raw system call). Go's linker writes CFI only as (compressed) .debug_frame. The sites
// are exact:
//
//	mapFive            5 x 1 MiB kept                 -> 5 MiB in 5
//	mapAndUnmapThree   3 x 1 MiB mapped and unmapped  -> nothing
//
// The 40 MiB held on the Go heap (growHeap) is mapped by the runtime on its system stack.
package main

import (
	"fmt"
	"os"
	"syscall"
)

const mib = 1 << 20

var kept [][]byte

//go:noinline
func mapFive() {
	for i := 0; i < 5; i++ {
		m, err := syscall.Mmap(-1, 0, mib, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
		if err != nil {
			panic(err)
		}
		m[0] = 1
		kept = append(kept, m)
	}
}

//go:noinline
func mapAndUnmapThree() {
	for i := 0; i < 3; i++ {
		m, err := syscall.Mmap(-1, 0, mib, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
		if err != nil {
			panic(err)
		}
		m[0] = 1
		if err := syscall.Munmap(m); err != nil {
			panic(err)
		}
	}
}

//go:noinline
func growHeap() {
	for i := 0; i < 40; i++ {
		kept = append(kept, make([]byte, mib))
	}
}

func main() {
	mapFive()
	mapAndUnmapThree()
	growHeap()
	fmt.Fprintln(os.Stdout, "mapped", len(kept))
}
