# slimkv — build the library, the CLI and the tests.
#   make            build build/slimkv and build/skv_tests
#   make demo       install missing packages, build, generate text with the shipped model
#   make test       install missing packages, build, run the test suite
#   make asan       build with AddressSanitizer into build-asan/ and run the tests
#   make CUDA=1     the same with the CUDA backend (nvcc from /usr/local/cuda), into build-cuda/
#   make cuda-check compile the CUDA backend (what CI checks on machines without a GPU)

CC      ?= gcc
BUILD   ?= build
ARCH    ?= -march=native
OPT     ?= -O2
BLASDIR := /usr/lib/x86_64-linux-gnu/openblas-openmp
BLASINC := /usr/include/x86_64-linux-gnu/openblas-openmp
CFLAGS  += -std=c11 -D_GNU_SOURCE $(OPT) $(ARCH) -g -fopenmp -Wall -Wextra -Wno-unused-parameter \
           -Iinclude -Isrc -Isrc/base -I$(BLASINC) $(EXTRA_CFLAGS)
LDLIBS  += -L$(BLASDIR) -Wl,-rpath,$(BLASDIR) -lopenblas -lcjson -lpcre2-8 -lutf8proc -llzma -lzstd \
           -lm -fopenmp $(EXTRA_LDFLAGS)

LIB_SRC  := $(shell find src -name '*.c' | sort)
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)

CUDA_HOME ?= /usr/local/cuda
NVCC      ?= $(CUDA_HOME)/bin/nvcc
ifeq ($(CUDA),1)
BUILD     := build-cuda
LIB_OBJ   := $(LIB_SRC:%.c=$(BUILD)/%.o)
CU_SRC    := $(shell find src -name '*.cu' | sort)
LIB_OBJ   += $(CU_SRC:%.cu=$(BUILD)/%.o)
CFLAGS    += -DSKV_CUDA
LDLIBS    += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcudart -lstdc++
NVFLAGS   := -O3 -std=c++17 -gencode=arch=compute_90,code=sm_90 -lineinfo -Xcompiler -Wall,-Wextra,-Wno-unused-parameter \
             -Iinclude -Isrc -Isrc/base -DSKV_CUDA
endif
CLI_SRC  := $(wildcard tools/*.c)
CLI_OBJ  := $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_SRC := $(wildcard tests/*.c)
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/%.o)
DEPS     := $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(TEST_OBJ:.o=.d)

DEMO_PROMPT ?= It is a truth universally acknowledged, that

.PHONY: all deps demo test asan clean cuda-check FORCE
all: $(BUILD)/slimkv $(BUILD)/skv_tests

deps:
	@./scripts/deps.sh

$(BUILD)/libslimkv.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/slimkv: $(CLI_OBJ) $(BUILD)/libslimkv.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/skv_tests: $(TEST_OBJ) $(BUILD)/libslimkv.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c -o $@ $<

# result files name the commit the binary was built from: cli.o is rebuilt every time
BUILD_COMMIT := $(shell git rev-parse --short=12 HEAD 2>/dev/null)$(shell git status --porcelain --untracked-files=no 2>/dev/null | head -1 | sed 's/.*/-dirty/')
$(BUILD)/tools/cli.o: CFLAGS += -DSKV_BUILD_COMMIT=\"$(BUILD_COMMIT)\"
$(BUILD)/tools/cli.o: FORCE
FORCE:

$(BUILD)/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -MMD -MP -c -o $@ $<

cuda-check:
	$(MAKE) CUDA=1 all

demo: deps
	$(MAKE) $(BUILD)/slimkv
	./$(BUILD)/slimkv run -m models/kvt-s -p "$(DEMO_PROMPT)" -n 64

# the CUDA build is compiled (not run: CI has no GPU) wherever nvcc is installed
test: deps
	$(MAKE) all
	@if [ -x "$(NVCC)" ]; then $(MAKE) CUDA=1 all; else echo "$(NVCC) not found: the CUDA build is not checked"; fi
	./$(BUILD)/skv_tests

asan:
	$(MAKE) BUILD=build-asan OPT=-O1 EXTRA_CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer" \
	    EXTRA_LDFLAGS="-fsanitize=address,undefined" all
	SKV_CLI=build-asan/slimkv ./build-asan/skv_tests

clean:
	rm -rf build build-asan build-cuda

-include $(DEPS)
