# slimkv — build the library, the CLI and the tests.
#   make            build build/slimkv and build/skv_tests
#   make demo       install missing packages, build, generate text with the shipped model
#   make test       install missing packages, build, run the test suite
#   make asan       build with AddressSanitizer into build-asan/ and run the tests
#   make CUDA=1     the same with the CUDA backend (nvcc from /usr/local/cuda), into build-cuda/
#   make cuda-check compile the CUDA backend (what CI checks on machines without a GPU)
#   make install    PREFIX=/usr/local: libslimkv.a, slimkv.h, the slimkv CLI and slimkv.pc
#                   (then: cc prog.c $(pkg-config --cflags --libs slimkv))
#   make fuzz       build the libFuzzer harnesses of fuzz/ with clang into build-fuzz/
#   make fuzz-smoke run each harness for a fixed number of executions (part of `make test`
#                   where clang with libFuzzer is installed)

CC      ?= gcc
BUILD   ?= build
ARCH    ?= -march=native
OPT     ?= -O2
BLASDIR := /usr/lib/x86_64-linux-gnu/openblas-openmp
BLASINC := /usr/include/x86_64-linux-gnu/openblas-openmp
CFLAGS  += -std=c11 -D_GNU_SOURCE $(OPT) $(ARCH) -g -fopenmp -Wall -Wextra -Wno-unused-parameter \
           -Iinclude -Isrc -Isrc/base -I$(BLASINC) $(EXTRA_CFLAGS)
LDLIBS  += -L$(BLASDIR) -Wl,-rpath,$(BLASDIR) -lopenblas -lcjson -lpcre2-8 -lutf8proc -llzma -lzstd \
           -lucp -lucs -lm -fopenmp $(EXTRA_LDFLAGS)

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
TEST_SRC := $(wildcard tests/*.c) $(wildcard fuzz/fuzz_*.c)
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/%.o)
DEPS     := $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(TEST_OBJ:.o=.d)

DEMO_PROMPT ?= It is a truth universally acknowledged, that

.PHONY: all deps demo test asan clean cuda-check fuzz fuzz-smoke install FORCE
all: $(BUILD)/slimkv $(BUILD)/skv_tests $(BUILD)/embed

deps:
	@./scripts/deps.sh

$(BUILD)/libslimkv.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

# the CLI alone links libmicrohttpd (slimkv serve)
$(BUILD)/slimkv: $(CLI_OBJ) $(BUILD)/libslimkv.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS) -lmicrohttpd

$(BUILD)/skv_tests: $(TEST_OBJ) $(BUILD)/libslimkv.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

# the embedding example, built as a user would (it includes slimkv.h only)
$(BUILD)/embed: examples/embed.c $(BUILD)/libslimkv.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c -o $@ $<

PREFIX  ?= /usr/local
VERSION := $(shell sed -n 's/.*skv_version(void) { return "\(.*\)"; }/\1/p' src/base/status.c)
install: $(BUILD)/libslimkv.a $(BUILD)/slimkv
	install -d $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/bin
	install -m 644 $(BUILD)/libslimkv.a $(DESTDIR)$(PREFIX)/lib/
	install -m 644 include/slimkv.h $(DESTDIR)$(PREFIX)/include/
	install -m 755 $(BUILD)/slimkv $(DESTDIR)$(PREFIX)/bin/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' -e 's|@LIBS@|$(strip $(LDLIBS))|' \
	    slimkv.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/slimkv.pc

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
	@if $(FUZZ_PROBE); then $(MAKE) fuzz-smoke; else echo "$(FUZZ_CC) with libFuzzer not found: fuzz-smoke skipped"; fi
	./$(BUILD)/skv_tests

ASAN_FLAGS := -fsanitize=address,undefined,float-cast-overflow
asan:
	$(MAKE) BUILD=build-asan OPT=-O1 EXTRA_CFLAGS="$(ASAN_FLAGS) -fno-omit-frame-pointer" \
	    EXTRA_LDFLAGS="$(ASAN_FLAGS)" all
	SKV_CLI=build-asan/slimkv SKV_MAKE_ARGS='BUILD=build-asan OPT=-O1 EXTRA_CFLAGS="$(ASAN_FLAGS) -fno-omit-frame-pointer" EXTRA_LDFLAGS="$(ASAN_FLAGS)"' \
	    ./build-asan/skv_tests

# libFuzzer harnesses: the parsers of outside input (and what they need: base, io, tokenizer,
# the task reader) compiled by clang with the fuzzer, address and undefined-behaviour sanitizers
FUZZ_CC      ?= clang
FUZZ_BUILD   := build-fuzz
FUZZ_TARGETS := safetensors st_index config tokenizer_json tokenize tasks scd_frame gguf
FUZZ_LIB_SRC := $(sort $(wildcard src/base/*.c src/io/*.c src/tokenizer/*.c)) src/eval/tasks.c src/net/frame.c src/kv/quant.c
FUZZ_LIB_OBJ := $(FUZZ_LIB_SRC:%.c=$(FUZZ_BUILD)/%.o)
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_CFLAGS  := -std=c11 -D_GNU_SOURCE -O1 -g -fno-omit-frame-pointer -Wall -Wextra -Wno-unused-parameter \
                -Iinclude -Isrc -Isrc/base $(FUZZ_SAN)
FUZZ_LIBS    := -lcjson -lpcre2-8 -lutf8proc -llzma -lm
FUZZ_PROBE   := printf 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return 0; }\n' | \
                $(FUZZ_CC) -fsanitize=fuzzer -x c - -o /dev/null >/dev/null 2>&1
# executions per harness in fuzz-smoke (about a minute in all on this 2-core machine)
FUZZ_RUNS_safetensors    ?= 300000
FUZZ_RUNS_st_index       ?= 200000
FUZZ_RUNS_config         ?= 500000
FUZZ_RUNS_tokenizer_json ?= 30000
FUZZ_RUNS_tokenize       ?= 60000
FUZZ_RUNS_tasks          ?= 300000
FUZZ_RUNS_scd_frame      ?= 300000
FUZZ_RUNS_gguf           ?= 100000

fuzz: $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/fuzz_%)

$(FUZZ_BUILD)/src/%.o: src/%.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c -o $@ $<

$(FUZZ_BUILD)/fuzz_%: fuzz/fuzz_%.c fuzz/fuzz.h $(FUZZ_LIB_OBJ)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -DSKV_LIBFUZZER -o $@ $< $(FUZZ_LIB_OBJ) $(FUZZ_LIBS)

# Each harness from its seeds and regression inputs (read-only; new inputs go to a scratch
# corpus under build-fuzz/), a fixed number of executions with a fixed seed; a crash leaves its
# input in build-fuzz/artifacts/ and fails the target.
fuzz-smoke: fuzz
	@mkdir -p $(FUZZ_BUILD)/artifacts
	@set -e; for t in $(FUZZ_TARGETS); do \
	    rm -rf $(FUZZ_BUILD)/work/$$t; mkdir -p $(FUZZ_BUILD)/work/$$t fuzz/regress/$$t; \
	    runs=$$(case $$t in safetensors) echo $(FUZZ_RUNS_safetensors);; st_index) echo $(FUZZ_RUNS_st_index);; \
	        config) echo $(FUZZ_RUNS_config);; tokenizer_json) echo $(FUZZ_RUNS_tokenizer_json);; \
	        tokenize) echo $(FUZZ_RUNS_tokenize);; tasks) echo $(FUZZ_RUNS_tasks);; \
	        scd_frame) echo $(FUZZ_RUNS_scd_frame);; gguf) echo $(FUZZ_RUNS_gguf);; esac); \
	    start=$$(date +%s); \
	    if ! ./$(FUZZ_BUILD)/fuzz_$$t -runs=$$runs -seed=1 -timeout=10 -rss_limit_mb=2048 \
	            -artifact_prefix=$(FUZZ_BUILD)/artifacts/$$t- \
	            $(FUZZ_BUILD)/work/$$t fuzz/corpus/$$t fuzz/regress/$$t > $(FUZZ_BUILD)/smoke-$$t.log 2>&1; then \
	        tail -40 $(FUZZ_BUILD)/smoke-$$t.log; echo "fuzz-smoke: fuzz_$$t FAILED (log: $(FUZZ_BUILD)/smoke-$$t.log)"; exit 1; \
	    fi; \
	    echo "fuzz-smoke: fuzz_$$t $$runs executions, no finding ($$(( $$(date +%s) - start )) s)"; \
	done

clean:
	rm -rf build build-asan build-cuda build-fuzz

-include $(DEPS) $(FUZZ_LIB_OBJ:.o=.d)
