/*
 * main.c — registers every test area and runs them. Usage: skv_tests [NAME-SUBSTRING]
 */
#include "harness.h"

int skv_test_main(int argc, char **argv);

#define AREAS(X) X(tokenizer) X(conformance) X(arch) X(sampler) X(badinput) X(kv) X(seam) X(smallkv) X(kcache) X(eval) X(robust) X(fuzz) X(chat) X(serve) X(multi) X(kvattn) X(lckv) X(minicache) X(augment) X(scd) X(gguf) X(quant) X(ggufconvert) X(ggufmodels) X(sync) X(cuda) X(cuda_kcache) X(cuda_qw) X(cuda_kivi)

#define DECL(a) void register_##a(void);
AREAS(DECL)
#undef DECL

int main(int argc, char **argv) {
#define CALL(a) register_##a();
    AREAS(CALL)
#undef CALL
    return skv_test_main(argc, argv);
}
