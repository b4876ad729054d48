/*
 * slimkv.h — the one public header of libslimkv.
 *
 * An inference engine for decoder-only LLMs (Llama / Qwen2 / Mistral family, Hugging Face
 * format) whose KV cache is the product. Conventions:
 *   - opaque handles; *_init / *_load fill an out-pointer and return a status; a matching *_free;
 *   - params structs are passed by value and come from *_default_params();
 *   - every failing call returns a negative skv_status and leaves a one-line message naming the
 *     file, field or argument in skv_last_error() (thread-local);
 *   - the library never exits or prints; only the CLI does.
 */
#ifndef SLIMKV_H
#define SLIMKV_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------ */
/* Status codes                                                                                 */
/* ------------------------------------------------------------------------------------------ */

typedef enum skv_status {
    SKV_OK = 0,
    SKV_ERR_IO = -1,          /* a file is missing or cannot be read */
    SKV_ERR_FORMAT = -2,      /* a file is malformed (JSON, safetensors header, offsets) */
    SKV_ERR_UNSUPPORTED = -3, /* a valid input this engine does not implement (architecture, dtype) */
    SKV_ERR_NOMEM = -4,       /* an allocation failed */
    SKV_ERR_ARG = -5,         /* a bad argument (empty prompt, bad option value) */
    SKV_ERR_RANGE = -6,       /* a size limit exceeded (prompt longer than the context) */
    SKV_ERR_SHAPE = -7,       /* a tensor's shape or dtype disagrees with the config */
} skv_status;

/* Short fixed description of a status code. */
const char *skv_strerror(skv_status st);
/* The detailed message of the last failing call on this thread ("" if none). */
const char *skv_last_error(void);

/* ------------------------------------------------------------------------------------------ */
/* Tokenizer (tokenizer.json: byte-level BPE, or SentencePiece-style BPE with byte fallback)    */
/* ------------------------------------------------------------------------------------------ */

typedef struct skv_tokenizer skv_tokenizer;

/* Load a Hugging Face tokenizer.json file. */
skv_status skv_tokenizer_load(const char *path, skv_tokenizer **out);
void skv_tokenizer_free(skv_tokenizer *tok);
int32_t skv_tokenizer_n_vocab(const skv_tokenizer *tok);

/* Encode text[0..len) into ids. No BOS/EOS is added. Added/special tokens that appear literally
 * in the text are matched as single ids. *ids is malloc'd; the caller frees it. */
skv_status skv_tokenize(const skv_tokenizer *tok, const char *text, size_t len, int32_t **ids,
                        size_t *n_ids);

/* Decode ids to text (malloc'd, NUL-terminated, caller frees). Invalid UTF-8 becomes U+FFFD,
 * as the reference implementation does. */
skv_status skv_detokenize(const skv_tokenizer *tok, const int32_t *ids, size_t n_ids, char **text,
                          size_t *len);

/* Streaming decoder: push one id at a time and receive only complete UTF-8 characters; bytes
 * of a character split across tokens are held back until it completes. */
typedef struct skv_detok skv_detok;
skv_status skv_detok_init(const skv_tokenizer *tok, skv_detok **out);
void skv_detok_free(skv_detok *d);
/* Appends the newly completed text for id to out (NUL-terminated, at most cap-1 bytes written;
 * cap >= 64 suffices for any single token of the supported tokenizers). Returns bytes written,
 * or a negative status for an out-of-range id. */
int skv_detok_push(skv_detok *d, int32_t id, char *out, size_t cap);
/* Emits whatever is held back (incomplete characters become U+FFFD). */
int skv_detok_flush(skv_detok *d, char *out, size_t cap);

/* ------------------------------------------------------------------------------------------ */
/* Chat templates                                                                               */
/* ------------------------------------------------------------------------------------------ */

/* A chat turn. role: "system", "user" or "assistant"; content: UTF-8 text. */
typedef struct skv_chat_msg {
    const char *role;
    const char *content;
} skv_chat_msg;

/* Template families, recognised from distinctive substrings of a model's chat template (the
 * Jinja text of tokenizer_config.json's `chat_template` or chat_template.jinja); there is no
 * Jinja engine, each family is written out by hand:
 *   PLAIN    a model without a template (the kvt models): "System: ...\n\nUser: ...\n\n"
 *            and the generation prompt "Assistant:" (roles capitalised, one blank line after
 *            each message, content as given)
 *   CHATML   "<|im_start|>role\ncontent<|im_end|>\n" (Qwen2, Qwen2.5, SmolLM2); a default
 *            system message found in the template (Qwen2's "You are a helpful assistant.",
 *            SmolLM2's) is inserted when the first message is not a system message
 *   LLAMA3   bos + "<|start_header_id|>role<|end_header_id|>\n\n" + trimmed content +
 *            "<|eot_id|>"; Llama-3.1/3.2/3.3 templates ("Cutting Knowledge Date") always open
 *            with a system header carrying the knowledge date and "Today Date: 26 Jul 2024" (the
 *            templates' default date_string) and the trimmed system message, if any
 *   GEMMA    bos + "<start_of_turn>role\n" + trimmed content + "<end_of_turn>\n", assistant
 *            written "model"; Gemma-3 templates fold a system message into the first turn
 *            (content + "\n\n"), Gemma-1/2 templates refuse it as they do
 * Trimming strips ASCII whitespace. Tool calls, multimodal content and role alternation checks
 * are not implemented. */
typedef enum skv_chat_family {
    SKV_CHAT_UNKNOWN = -1, /* a template none of the families recognises */
    SKV_CHAT_PLAIN = 0,
    SKV_CHAT_CHATML = 1,
    SKV_CHAT_LLAMA3 = 2,
    SKV_CHAT_GEMMA = 3,
} skv_chat_family;

/* The family of a template text (NULL or "": PLAIN). */
skv_chat_family skv_chat_detect(const char *tmpl);
/* "plain", "chatml", "llama3", "gemma" ("unknown" otherwise). */
const char *skv_chat_family_name(skv_chat_family f);
/* The text that ends an assistant turn in the family, to stop generation at ("<|im_end|>",
 * "<|eot_id|>", "<end_of_turn>"; PLAIN: "\nUser:"); NULL for UNKNOWN. */
const char *skv_chat_stop(skv_chat_family f);
/* Render msgs[0..n) with template text tmpl (NULL: PLAIN) into *out (malloc'd, NUL-terminated;
 * the caller frees). bos_token: the text of the BOS token (NULL: the family's usual one) for the
 * families that write it. add_generation_prompt: 1 appends the opening of an assistant turn.
 * SKV_ERR_UNSUPPORTED for a template of no known family; SKV_ERR_ARG for n == 0, a NULL role or
 * content, an unknown role, or a system message the template refuses. */
skv_status skv_chat_render(const char *tmpl, const char *bos_token, const skv_chat_msg *msgs,
                           size_t n, int add_generation_prompt, char **out);

/* ------------------------------------------------------------------------------------------ */
/* Model                                                                                        */
/* ------------------------------------------------------------------------------------------ */

typedef enum skv_arch {
    SKV_ARCH_LLAMA = 0,
    SKV_ARCH_QWEN2 = 1,
    SKV_ARCH_MISTRAL = 2,
    SKV_ARCH_GEMMA3 = 3, /* from GGUF files */
} skv_arch;

/* Stored weight types: float, and (from GGUF files) ggml's block-quantized formats, used in
 * place: blocks of 32 (Q4_0, Q4_1, Q5_0, Q8_0) or 256 (Q4_K, Q5_K, Q6_K) weights along a row,
 * each with its own scale(s). */
typedef enum skv_dtype {
    SKV_DTYPE_F32 = 0,
    SKV_DTYPE_F16 = 1,
    SKV_DTYPE_BF16 = 2,
    SKV_DTYPE_Q4_0 = 3,
    SKV_DTYPE_Q4_1 = 4,
    SKV_DTYPE_Q5_0 = 5,
    SKV_DTYPE_Q8_0 = 6,
    SKV_DTYPE_Q4_K = 7,
    SKV_DTYPE_Q5_K = 8,
    SKV_DTYPE_Q6_K = 9,
    SKV_DTYPE_COUNT = 10,
} skv_dtype;

/* "F32", "BF16", "Q4_K", ... */
const char *skv_dtype_name(skv_dtype t);

/* Hyperparameters read from config.json. */
typedef struct skv_model_info {
    skv_arch arch;
    int32_t n_vocab;
    int32_t dim;        /* hidden_size */
    int32_t ffn_dim;    /* intermediate_size */
    int32_t n_layer;
    int32_t n_head;     /* query heads */
    int32_t n_kv_head;  /* key/value heads (GQA) */
    int32_t head_dim;
    int32_t n_ctx;      /* max_position_embeddings */
    int32_t bos_id;     /* -1 if absent */
    int32_t eos_id;     /* -1 if absent */
    int32_t tied_embeddings; /* 1: lm_head shares embed_tokens */
    int32_t qkv_bias;   /* 1: q/k/v projections carry a bias (Qwen2) */
    int32_t sliding_window; /* 0: none (Mistral's sliding window, if set and < n_ctx; Gemma 3's
                               local layers) */
    int32_t add_bos;    /* 1: prompts start with bos_id (GGUF tokenizer.ggml.add_bos_token; the CLI adds it) */
    float rms_eps;
    float rope_theta;
    skv_dtype weight_dtype; /* dtype of the stored weights */
    int64_t n_params;
    int64_t weight_bytes;        /* bytes of all stored tensors */
    int64_t decode_weight_bytes; /* weight bytes one decode step reads (all but the untied
                                    embedding table, of which it reads one row) */
} skv_model_info;

typedef struct skv_model skv_model;

typedef struct skv_model_params {
    int32_t n_threads; /* 0: all cores */
    int32_t use_mmap;  /* 1: weights stay in the file mapping (page cache); 0 (default): after
                          validation they are copied into huge-page-backed memory, which makes
                          decode faster (fewer TLB misses) at the cost of a private copy */
    int32_t no_check;  /* 1: skip the load-time scan that refuses NaN or Inf in any weight */
    int32_t lckv_iters; /* LCKV models: the prefill iterations contexts use by default (0:
                          config.json's forward_passes + backward_passes, else 9) */
    int32_t f32_prefill; /* 1: quantized weights multiply f32 activations in prefill (dequantised
                          tiles + OpenBLAS: the reference arithmetic); 0 (default): K-quant
                          weights (Q4_K, Q5_K, Q6_K) multiply int8 activations quantized per 256
                          values, as decode and llama.cpp do (AVX-512 VNNI hosts; faster) */
} skv_model_params;

skv_model_params skv_model_default_params(void);

/* Layer-to-cache map: the layer whose KV `layer` attends to (*src_layer) and whether `layer`
 * appends its own KV to the cache (*appends; the cache holds only such "cache layers"). Every
 * layer of a standard model is its own source. Either pointer may be NULL. */
skv_status skv_model_layer_cache(const skv_model *m, int32_t layer, int32_t *src_layer, int32_t *appends);
/* Layers that append KV (the cache's layers; budgets are per cache layer). */
int32_t skv_model_n_cache_layers(const skv_model *m);

/* Load config.json and the safetensors weights (one file or sharded with
 * model.safetensors.index.json) from a Hugging Face model directory. Weights are memory-mapped
 * and validated (header, offsets, shapes, dtypes) before use. */
skv_status skv_model_load(const char *dir, skv_model_params params, skv_model **out);
void skv_model_free(skv_model *m);
const skv_model_info *skv_model_get_info(const skv_model *m);

/* The model's chat template text (tokenizer_config.json `chat_template`, or the file
 * chat_template.jinja), or NULL when it has none. */
const char *skv_model_chat_template(const skv_model *m);
/* skv_chat_render with the model's template and BOS text (tokenizer_config.json `bos_token`). */
skv_status skv_chat_apply(const skv_model *m, const skv_chat_msg *msgs, size_t n,
                          int add_generation_prompt, char **out);
/* A prompt's ids as the model expects them: skv_tokenize, then bos_id in front when the model
 * asks for it (info.add_bos: GGUF tokenizer.ggml.add_bos_token, as llama.cpp's tokenizer with
 * add_special and transformers' do) and the text does not already begin with it (a chat
 * template's "<bos>"): Gemma 3's "Hi" -> [2, 6974]. *ids: malloc'd, the caller frees. */
skv_status skv_model_tokenize(const skv_model *m, const skv_tokenizer *tok, const char *text, size_t len,
                              int32_t **ids, size_t *n);

/* ------------------------------------------------------------------------------------------ */
/* Context: one sequence's state (KV cache + scratch) over a loaded model                       */
/* ------------------------------------------------------------------------------------------ */

typedef struct skv_context skv_context;

/* Storage format of cached K and V rows. The quantized formats follow KIVI: keys per channel
 * and values per token (groups of 32 channels), with scale and minimum per group, in blocks of
 * 32 tokens; the newest tokens of each head (the block still filling) stay f32. f16 is IEEE
 * half precision (round to nearest even; as llama.cpp's default cache type), CPU only. The CPU
 * decode attention reads every format in place (no f32 copy per step). */
typedef enum skv_kv_format {
    SKV_KV_F32 = 0,
    SKV_KV_BF16 = 1,
    SKV_KV_Q8 = 2,
    SKV_KV_Q4 = 3,
    SKV_KV_F16 = 4,
    SKV_KV_FORMAT_COUNT = 5,
} skv_kv_format;

/* A KV-cache policy decides which tokens each KV head keeps. It runs after every multi-token
 * skv_decode call (a prompt, or a chunk of one: "compression", to the budget relative to the
 * tokens cached so far) and after every single-token call (a decode step).
 *   full      keep everything
 *   window    StreamingLLM: `sinks` first tokens + the most recent ones
 *   h2o       heavy hitters by accumulated attention + recent tokens, re-evicted every step
 *   snapkv    per head, the keys the last `obs_window` prompt queries attend to most (scores
 *             max-pooled over `pool_kernel` neighbouring keys) + the window itself, once per
 *             compression; decode steps append
 *   pyramidkv as snapkv, with budgets shrinking linearly from the bottom layer to the top
 *   tova      TOVA: evict the token the current query attends to least, every step
 *   quant     keep everything, stored as KIVI int8 or int4 (`quant_bits`)
 *   kcache    KCache (arXiv 2404.18057): K stays fast, V of all but the newest `kc_recent`
 *             tokens moves to a slow store (CPU: a memory-mapped file or zstd blocks in a file;
 *             CUDA: pinned host memory read over PCIe);
 *             each decode step scores every key and reads only the top-`kc_n` V rows per
 *             (layer, KV head); over the eviction of `kc_over` when given (e.g. snapkv)
 *   minicache MiniCache (arXiv 2405.14366): after each prompt, groups of cache layers share one
 *             direction per token (SLERP; per-layer norms kept), the most distinct tokens
 *             (`mc_keep`, or as many as `mc_bytes` allows) unmerged; KV bytes count what that
 *             representation stores (CPU)
 * Budgets are per KV head; with GQA the scores of a group's query heads are summed. */
typedef struct skv_policy_params {
    const char *name;      /* one of the above; NULL means "full" */
    float budget;          /* fraction of the cached tokens kept at compression, in (0, 1] */
    int32_t budget_tokens; /* or an absolute count per KV head (used when budget is 0) */
    int32_t sinks;         /* window: attention-sink tokens (default 4) */
    float recent_frac;     /* h2o: share of the budget for recent tokens (default 0.5) */
    int32_t obs_window;    /* snapkv, pyramidkv: observation window (default 32) */
    int32_t pool_kernel;   /* snapkv, pyramidkv: max-pool width over keys, odd (default 7) */
    float pyramid_beta;    /* pyramidkv: top layer gets budget / beta (default 20) */
    int32_t quant_bits;    /* quant: 8 or 4 (default 4) */
    /* kcache */
    int32_t kc_n;          /* V rows read per (layer, KV head) and step (default 64) */
    float kc_frac;         /* or a fraction of the stream's kept tokens, in (0, 1] (used when
                              kc_n is 0) */
    int32_t kc_recent;     /* R: the newest R tokens' V stay fast and are always read
                              (default 32) */
    int32_t kc_fast_layers;/* the first k cache layers keep V fast and read all of it (default 0) */
    int32_t kc_weight;     /* SKV_KC_RENORM (default) or SKV_KC_EXACT */
    int32_t kc_gran;       /* SKV_KC_SUM (default), SKV_KC_MAX or SKV_KC_UNION */
    int32_t kc_store;      /* SKV_KC_MMAP (default) or SKV_KC_ZSTD */
    int32_t kc_block;      /* zstd: tokens per compressed block, a multiple of 32 (default 32) */
    const char *kc_dir;    /* directory of the slow-tier file (NULL: $TMPDIR or /tmp) */
    const char *kc_over;   /* eviction policy applied first (NULL: none; e.g. "snapkv") */
    int32_t kc_cold;       /* mmap: drop the file's pages from the page cache before every
                              decode step (cold-cache measurements) */
    /* minicache */
    const char *mc_groups; /* groups of cache layers merged, "5:6,7:8" (NULL: pairs from the
                              middle layer up) */
    float mc_t;            /* SLERP parameter of a pair (default 0.5) */
    float mc_keep;         /* fraction of tokens left unmerged, the most distinct (default 0.05) */
    float mc_bytes;        /* or, when > 0: the fraction of the full cache's KV bytes to store, in
                              (0, 1]; sets the unmerged fraction (the same for every group) */
} skv_policy_params;

/* kcache options */
enum { SKV_KC_RENORM = 0, SKV_KC_EXACT = 1 };          /* weights of the rows read */
enum { SKV_KC_SUM = 0, SKV_KC_MAX = 1, SKV_KC_UNION = 2 }; /* ranking over a KV group */
enum { SKV_KC_MMAP = 0, SKV_KC_ZSTD = 1 };             /* slow store */

skv_policy_params skv_policy_default_params(const char *name);
/* The registry of policies: how many, and each one's name and one-line summary (NULL out of
 * range); whether a policy of that name evicts tokens: 0 never (its budget does not matter),
 * 1 when a prompt is compressed, 2 also after every decode step. */
int skv_policy_count(void);
const char *skv_policy_name(int i);
const char *skv_policy_summary(int i);
int skv_policy_evicts(const char *name);
/* Check a policy and budget against a model: unknown name, budget <= 0 or > 1, a budget that
 * cannot hold the sinks + 1 recent token or the observation window, a head_dim the quantizer
 * cannot group. */
skv_status skv_policy_validate(const skv_policy_params *p, const skv_model *m);

/* Where a context runs. The CUDA backend (built with `make CUDA=1`) keeps bf16 weights and a
 * bf16 KV cache on the GPU; it runs the full policy, without attention statistics or forks. */
typedef enum skv_backend { SKV_BACKEND_CPU = 0, SKV_BACKEND_CUDA = 1 } skv_backend;

/* 1 if contexts can use the backend here (CUDA: built with it and a device answers); else 0,
 * with the reason in skv_last_error(). */
int skv_backend_available(skv_backend b);

typedef struct skv_sampler skv_sampler; /* see Sampling */

typedef struct skv_context_params {
    int32_t n_ctx;       /* tokens the cache holds; 0: the model's max_position_embeddings */
    int32_t n_batch;     /* most tokens one skv_decode call processes at once; 0: 512 */
    skv_kv_format kv_format; /* storage of K and V (default f32; the quant policy sets its own) */
    skv_policy_params policy;
    int32_t collect_stats; /* 1: gather the attention statistics of every policy, whatever the
                              own policy, so that skv_context_fork can branch into any of them */
    int32_t collect_head_stats; /* 1 (full policy only): keep, per layer and query head, the
                              attention accumulated over all queries and the last decode step's
                              attention, by position (skv_context_head_attention) */
    int32_t head_prefix;   /* with collect_head_stats: also accumulate, separately, the attention
                              of the queries at positions < head_prefix (SmallKV's matching) */
    skv_backend backend;   /* SKV_BACKEND_CPU (default) or SKV_BACKEND_CUDA */
    int32_t v_slow;        /* CUDA: V blocks in pinned host memory (the slow tier, read over
                              PCIe), K on the device */
    int32_t n_seq;         /* sequences the context holds (0 or 1: one; more: the CUDA backend,
                              a policy that keeps the cache's format: full, kcache or one
                              that evicts, each sequence compressed and evicting on its own;
                              see "Several sequences") */
    int32_t lckv_iters;    /* LCKV models (layer_types in config.json): iterations of the
                              condensed group in a prefill (0: forward_passes + backward_passes
                              of config.json, else 9); prompt chunks of at most
                              min(lckv_iters, 9) tokens run token by token (exact) */
    int32_t batch_invariant; /* CUDA: 1 = each decode step's logits of a sequence are the same
                              bits whatever else is decoded with it and however many sequences
                              step together (skv_decode_batch of 1..n_seq, single-token
                              skv_decode), at some throughput cost; 0 (default): the fastest
                              kernels per batch size, which round differently. The CPU backend
                              is batch-invariant always. KCache's attention keeps its own
                              kernels (not batch-invariant). */
} skv_context_params;

skv_context_params skv_context_default_params(void);

skv_status skv_context_init(skv_model *m, skv_context_params params, skv_context **out);
void skv_context_free(skv_context *c);

/* Number of tokens in the cache (the position the next token gets). */
int32_t skv_context_n_past(const skv_context *c);
/* Forget everything after the first n_past tokens (n_past <= current length). */
skv_status skv_context_truncate(skv_context *c, int32_t n_past);

/* A new context holding a copy of src's cache and statistics, then compressed by `policy`
 * (the prompt's statistics must have been collected: collect_stats, or a src policy that needs
 * the same). The fork starts at src's position; src is unchanged. */
skv_status skv_context_fork(const skv_context *src, const skv_policy_params *policy,
                            skv_context **out);

/* Memory the KV cache holds right now (blocks in use; a partly filled block counts whole). */
typedef struct skv_kv_usage {
    int64_t bytes;          /* all K and V blocks */
    int64_t bytes_fast, bytes_slow;
    int64_t bytes_by_format[SKV_KV_FORMAT_COUNT];
    int64_t slots;          /* kept tokens summed over (layer, KV head) */
    int32_t n_past;         /* tokens seen */
    /* a slow store (kcache), cumulative since the context was created: */
    int64_t fetch_steps;    /* decode steps that read from it */
    int64_t fetch_rows;     /* V rows read from it */
    int64_t fetch_bytes;    /* bytes of those rows (zstd: compressed bytes read) */
    int64_t fetch_blocks;   /* zstd: compressed blocks read */
    int64_t fetch_ns;       /* time spent reading (summed over threads) */
    int64_t store_bytes;    /* bytes in the store now (in bytes_slow too) */
} skv_kv_usage;
void skv_context_kv_usage(const skv_context *c, skv_kv_usage *u);
/* Bytes held by one (layer, KV head) stream, K and V together. */
int64_t skv_context_kv_bytes_head(const skv_context *c, int32_t layer, int32_t kv_head);
/* Kept tokens of one (layer, KV head) stream and, if pos is non-NULL, their positions
 * (pos must hold n_ctx entries), in slot order. */
int32_t skv_context_kept(const skv_context *c, int32_t layer, int32_t kv_head, int32_t *pos);

/* Per-query-head attention of a context created with collect_head_stats: acc[n_past] the
 * attention every query so far paid to each position (summed over queries), last[n_past] the
 * attention of the last single-token step's query (zeros before any). Either may be NULL. */
skv_status skv_context_head_attention(const skv_context *c, int32_t layer, int32_t head, float *acc,
                                      float *last);
/* The same accumulation restricted to queries at positions < head_prefix: acc[head_prefix]. */
skv_status skv_context_head_attention_prefix(const skv_context *c, int32_t layer, int32_t head,
                                             float *acc);
/* Window statistics (collect_head_stats): from now on queries at positions >= `from` also
 * accumulate into a second per-head sum, read by skv_context_head_attention_window (n_past
 * floats). Call before the prompt with from = prompt length - W for a SnapKV-style observation
 * window that then grows with every decoded token. */
skv_status skv_context_set_head_window(skv_context *c, int32_t from);
skv_status skv_context_head_attention_window(const skv_context *c, int32_t layer, int32_t head,
                                             float *win);

/* Run n ids through the model, appending them to the cache. If logits is non-NULL it receives
 * logits for the last token only (n_vocab floats), or for all n tokens (n x n_vocab, row-major)
 * when all_logits is 1. Prompts longer than n_batch are processed in chunks. */
skv_status skv_decode(skv_context *c, const int32_t *ids, int32_t n, float *logits,
                      int all_logits);

/* Decoding with everything spelled out: the input as ids or as input embeddings (n rows of
 * dim floats, e.g. a coprocessor's latents), and as outputs (each may be NULL) logits and the
 * final hidden state before and after the final norm, for the last token or (all = 1) every
 * token. skv_decode(c, ids, n, logits, all) is skv_decode_ex with ids and logits only. */
typedef struct skv_batch {
    const int32_t *ids;    /* (n) or NULL */
    const float *embd;     /* (n, dim) or NULL */
    int32_t n;
    float *logits;         /* (n or 1, n_vocab) */
    float *hidden;         /* (n or 1, dim) before the final norm */
    float *hidden_normed;  /* (n or 1, dim) after it */
    int32_t all;
    /* Per-layer taps (CPU backend; each may be NULL): for every token, the residual stream
     * entering each layer and that layer's normalised attention input (after its RMSNorm,
     * before the q/k/v projections), each (n_layer, n, dim) */
    float *resid_in;
    float *attn_in;
    /* Run layers [layer0, layer1) only (CPU backend; 0 and 0: all). With layer0 > 0 the input
     * is embd holding the residual stream entering layer0; with layer1 < n_layer no logits or
     * final hidden states are produced. Only the layers run append to the cache (the others'
     * streams stay as they are): for filling some layers' K/V from sent hidden states. */
    int32_t layer0, layer1;
    /* Called once per layer as soon as that layer's K/V of the whole call are cached (CPU
     * backend; NULL: none), i.e. after the layer ran over the call's last chunk, with the
     * number of tokens cached by then: a prefill streamed layer by layer (SCD's producer). */
    void (*layer_done)(void *arg, int32_t layer, int32_t n_cached);
    void *layer_arg;
} skv_batch;
skv_status skv_decode_ex(skv_context *c, const skv_batch *b);

/* The cache as a buffer (malloc'd; free()): every (cache layer, KV head) stream's positions,
 * K and V rows in their stored formats and, if collected, statistics, with a checksum. Import
 * fills an empty context of a model with the same cache shape (cache layers, KV heads,
 * head_dim), on any backend (the CUDA backend takes f32 and bf16 rows); a corrupt, truncated
 * or mismatched buffer is refused naming what is wrong. */
skv_status skv_context_export(const skv_context *c, void **buf, size_t *len);
skv_status skv_context_import(skv_context *c, const void *buf, size_t len);

/* A full cache as plain rows by position (every token kept), for techniques that transform a
 * cache between models. get: one cache layer's K and V, f32 (n_past, n_kv_head * head_dim)
 * each, keys with RoPE undone when derope is 1. put: fill an empty context with n tokens at
 * positions 0..n-1 of every cache layer from k and v (n_cache_layers, n, n_kv_head * head_dim),
 * keys before RoPE when rope is 1 (RoPE is applied here) or after it when 0; the rows are stored
 * f32 and the context's policy then applies. */
skv_status skv_context_get_kv(const skv_context *c, int32_t layer, int derope, float *k, float *v);
skv_status skv_context_put_kv(skv_context *c, int32_t n, const float *k, const float *v, int rope);
/* K and V (before RoPE) of n normalised attention inputs h (n, dim) through layer's own
 * projections: k, v (n, n_kv_head * head_dim). */
/* RoPE applied to (inverse = 0) or undone from (1) key rows k (n, n_kv_head * head_dim) at
 * positions 0..n-1. */
skv_status skv_model_rope_rows(skv_model *m, float *k, int32_t n, int inverse);
skv_status skv_model_project_kv(const skv_model *m, int32_t layer, const float *h, int32_t n, float *k, float *v);

/* Read-only past (CPU backend): an empty context c attends to past's cache before its own;
 * its tokens take positions from past's length on and its own cache holds only them. past must
 * outlive the use and stay unchanged; NULL removes it (c must be empty again). */
skv_status skv_context_set_past(skv_context *c, const skv_context *past);

/* One decode step of token id, then the next token drawn by the sampler into *next (the
 * sampler is not told about it: call skv_sampler_accept). On the CUDA backend the penalty,
 * temperature, top-k, top-p and the draw run on the GPU with the sampler's own random stream,
 * and only the id comes back; on the CPU this is skv_decode + skv_sampler_sample. */
skv_status skv_decode_sampled(skv_context *c, int32_t id, skv_sampler *s, int32_t *next);

/* One decode step of n separate contexts of one model (each with its own policy, cache and
 * position): ids[i] goes into cs[i] at its next position, logits (n, n_vocab) or NULL. On the
 * CPU backend they run together, each weight row read once for all of them, and each context's
 * logits equal its own skv_decode's bit for bit; elsewhere one skv_decode after another. */
skv_status skv_decode_multi(skv_context *const *cs, int32_t n, const int32_t *ids, float *logits);

/* Several sequences in one context (n_seq > 1, CUDA): each has its own positions and cache
 * streams; sequence 0 is also the one skv_decode and friends use. skv_seq_decode appends n
 * tokens to one sequence (no outputs); skv_decode_batch runs one step of sequences 0..n-1
 * together (ids[i] for sequence i, at its next position), returning logits (n, n_vocab) and/or
 * each sequence's greedy next id; skv_seq_truncate forgets a sequence's tokens from n_past on. */
skv_status skv_seq_decode(skv_context *c, int32_t seq, const int32_t *ids, int32_t n);
/* skv_seq_decode with the last token's logits (n_vocab) into logits when non-NULL. With a
 * policy that evicts, a call of n > 1 tokens is a prompt: the sequence is then compressed to the
 * policy's budgets at its new length, and its decode steps evict as a single-sequence
 * context's do (as skv_decode). */
skv_status skv_seq_decode_logits(skv_context *c, int32_t seq, const int32_t *ids, int32_t n, float *logits);
skv_status skv_decode_batch(skv_context *c, const int32_t *ids, int32_t n, float *logits, int32_t *next);
/* One step of the n distinct sequences seqs[0..n) (any subset, any order: sequences join and
 * leave a running batch between steps), ids[r] into sequence seqs[r]; logits and next by row r.
 * skv_decode_batch is this with seqs 0..n-1. */
skv_status skv_decode_seqs(skv_context *c, const int32_t *seqs, const int32_t *ids, int32_t n, float *logits,
                           int32_t *next);
skv_status skv_seq_truncate(skv_context *c, int32_t seq, int32_t n_past);
/* The empty sequence dst takes a copy of sequence src's cache and position (a shared prompt
 * decoded into several continuations; CUDA). */
skv_status skv_seq_copy(skv_context *c, int32_t dst, int32_t src);
int32_t skv_seq_n_past(const skv_context *c, int32_t seq);
/* Bytes of the cache sequence seq holds (its blocks, after any eviction), or -1. */
int64_t skv_seq_kv_bytes(const skv_context *c, int32_t seq);

/* Facts of a backend's device for reports (CUDA: the GPU; CPU: name only), the measured
 * device-to-device copy bandwidth over `bytes` (bytes read + written per second), and the bytes
 * of weights a context's backend holds for its model (CUDA: the device copy). */
typedef struct skv_device_info {
    char name[128];
    int32_t sms;
    int64_t memory_bytes;
} skv_device_info;
skv_status skv_backend_device_info(skv_backend b, skv_device_info *out);
skv_status skv_backend_copy_bandwidth(skv_backend b, int64_t bytes, double *bytes_per_s);
/* Measured host-to-device copy bandwidth from pinned host memory over `bytes` (CUDA). */
skv_status skv_backend_h2d_bandwidth(skv_backend b, int64_t bytes, double *bytes_per_s);
int64_t skv_context_weight_bytes(const skv_context *c);

/* ------------------------------------------------------------------------------------------ */
/* SmallKV: a small model of the same family guides the large model's attention                */
/* ------------------------------------------------------------------------------------------ */

/* Each decode step the small model (full cache) runs first; every large-model KV head then takes
 * its critical tokens (own K and V), its recent window, and marginal tokens (V only, weighted by
 * the small model's attention) from the small model's accumulated attention of the matched
 * heads. Heads are matched once, by Jaccard similarity of top-K accumulated-attention sets over
 * the first match_len prompt tokens. The large model's full cache is kept (slow tier). */
typedef struct skv_smallkv_params {
    float budget;          /* slots per KV head as a fraction of the prompt, (0, 1] */
    float r_crit, r_recent, r_marg; /* token ratio (2 : 1 : 2); a marginal token is half a slot */
    int32_t match_len;     /* prompt tokens for head matching (128) */
    int32_t match_k;       /* top-K size for matching; 0: the critical share at match_len */
    int32_t paper;         /* 1: O_c + O_m unnormalised (the paper's Alg. 1); 0: mass-preserving */
    int32_t no_marginal;   /* ablation: no marginal tokens (their budget goes unused) */
    int32_t static_select; /* ablation: no saliency shift: critical and marginal sets fixed at
                              the first decode step, the recent window still slides */
    int32_t score;         /* SKV_SK_SCORE_ACC (the paper: attention summed over every query) or
                              SKV_SK_SCORE_WINDOW (summed over the prompt's last obs_window
                              queries and every decoded query: SnapKV's signal, global view) */
    int32_t obs_window;    /* window score: prompt queries counted (32) */
    int32_t pool;          /* window score: max-pool width over positions, odd; 1: none (7) */
    int32_t match_window;  /* 0: match heads on the first match_len tokens (the paper); 1: on the
                              whole prompt's observation-window attention (the last obs_window
                              queries of both models), once the prompt is in */
} skv_smallkv_params;

enum { SKV_SK_SCORE_ACC = 0, SKV_SK_SCORE_WINDOW = 1 };

typedef struct skv_smallkv skv_smallkv;

typedef struct skv_smallkv_usage {
    int64_t fast_bytes;    /* selected rows at the last step: crit+recent K and V, marginal V */
    int64_t slow_bytes;    /* the large model's full cache */
    int64_t draft_kv_bytes;      /* the small model's cache */
    int64_t draft_weight_bytes;  /* the small model's weights */
} skv_smallkv_usage;

skv_smallkv_params skv_smallkv_default_params(void);
/* Both models must share the vocabulary. n_ctx: tokens each cache holds (0: the large model's). */
skv_status skv_smallkv_init(skv_model *large, skv_model *small, skv_smallkv_params p, int32_t n_ctx,
                            skv_smallkv **out);
void skv_smallkv_free(skv_smallkv *s);
/* Prefill the prompt through both models (full attention); logits of the last token. */
skv_status skv_smallkv_prefill(skv_smallkv *s, const int32_t *ids, int32_t n, float *logits);
/* A driver from two contexts that prefilled the same prompt (large and small model), created
 * with collect_head_stats and head_prefix >= match_len; both are copied, not changed. Lets one
 * prefill serve several budgets and ablations. */
skv_status skv_smallkv_fork(const skv_context *large, const skv_context *small, skv_smallkv_params p,
                            skv_smallkv **out);
/* One decode step of both models. */
skv_status skv_smallkv_decode(skv_smallkv *s, int32_t id, float *logits);
void skv_smallkv_get_usage(const skv_smallkv *s, skv_smallkv_usage *u);
/* The matched small-model head (layer * n_head + head) of each large-model head, or NULL before
 * matching. */
const int32_t *skv_smallkv_head_map(const skv_smallkv *s);
/* Matching quality over the large model's heads: the mean Jaccard similarity of each head's
 * top-K set with its matched small head's, and the mean cosine similarity of their attention
 * maps (on the matching signal: prefix or window). SKV_ERR_ARG before matching. */
skv_status skv_smallkv_match_quality(const skv_smallkv *s, double *jaccard, double *cosine);

/* ------------------------------------------------------------------------------------------ */
/* Cache augmentation: a coprocessor writes latents into the cache (arXiv 2412.17747)            */
/* ------------------------------------------------------------------------------------------ */

/* A coprocessor directory (train/augment.py): the base model's layout (config.json,
 * model.safetensors), augment.json (base_model, n_latent, the base's hidden_size,
 * num_hidden_layers, num_key_value_heads, head_dim, vocab_size; latent "hidden_normed" or
 * "hidden"; positions "advance") and soft.safetensors (soft_embeddings: n_latent x hidden_size).
 * At context length T the coprocessor runs its soft embeddings at positions T .. T+n_latent-1
 * over the base context's cache as read-only past (its own KV is scratch), and its final hidden
 * states (after the final norm by default) are the latents; the base consumes them as input
 * embeddings (its cache grows by n_latent) and the next token goes to T+n_latent. On the CPU the
 * coprocessor reads the base cache in place (read-only past); on CUDA, which has no read-only
 * past, it reads a copy of the cache made on the device (a scratch context on the GPU). */
typedef struct skv_augment skv_augment;

typedef struct skv_augment_usage {
    int64_t weight_bytes;   /* the coprocessor's weights (as its backend holds them: the GPU copy on CUDA) */
    int64_t kv_bytes;       /* its scratch cache at the last augmentation (n_latent tokens; with a
                               copy, the copied base cache too) */
    int64_t runs;           /* augmentations so far */
    double seconds_cop;     /* time in the coprocessor pass, summed */
    double seconds_base;    /* time of the base consuming the latents, summed */
} skv_augment_usage;

/* Load the coprocessor in dir for the model base. Refused naming the field when augment.json or
 * the coprocessor's config disagrees with base (hidden_size, num_hidden_layers,
 * num_key_value_heads, head_dim, vocab_size), or soft_embeddings' shape disagrees with n_latent
 * or hidden_size. */
skv_status skv_augment_load(const char *dir, const skv_model *base, skv_model_params params,
                            skv_augment **out);
void skv_augment_free(skv_augment *a);
int32_t skv_augment_n_latent(const skv_augment *a);
/* The latents (n_latent x dim) for base context c's cache as it is now; c is not changed. */
skv_status skv_augment_latents(skv_augment *a, const skv_context *c, float *z);
/* Latents, then c consumes them: c grows by n_latent; logits (n_vocab, may be NULL) are the last
 * latent's, from which the first token after comes. */
skv_status skv_augment_apply(skv_augment *a, skv_context *c, float *logits);
void skv_augment_get_usage(const skv_augment *a, skv_augment_usage *u);
/* 1: read a copy of the base cache (made where the cache lives) even where a read-only past is available. */
void skv_augment_set_copy(skv_augment *a, int copy);
/* SCD: a producer model's prefill sent as low-rank codes to a consumer of the same architecture */
/* ------------------------------------------------------------------------------------------ */

/* Semantic Cache Distillation (arXiv 2606.07684). Maps fitted offline (train/scd_calibrate.py)
 * turn, per layer, the producer's de-RoPE'd K and V rows into low-rank codes and the codes into
 * the consumer's (reuse layers), or the producer's normalised attention input into codes that an
 * aligner turns into the consumer's, which its own projections turn into K and V (patch layers). */
typedef struct skv_scd_maps skv_scd_maps;
enum { SKV_SCD_K = 0, SKV_SCD_V = 1, SKV_SCD_H = 2 };

typedef struct skv_scd_shape {
    int32_t n_layer, kv_dim, dim; /* kv_dim = n_kv_head * head_dim */
    int32_t hidden;               /* aligner MLP width (0: linear aligner) */
    const int32_t *r_k, *r_v, *r_h; /* (n_layer) code ranks */
    const int32_t *patch_rank;    /* (n_layer) layers, the best patch layer first */
    int32_t patch_k;              /* patch layers chosen by the criterion at calibration */
    int32_t ranked;               /* 0: patch_rank not yet measured (identity order) */
    const char *producer, *consumer; /* model names recorded at calibration */
} skv_scd_shape;

/* Load a maps file (safetensors, f32 tensors, __metadata__ "scd" JSON); every tensor's presence,
 * dtype and shape is checked against the description. */
skv_status skv_scd_maps_load(const char *path, skv_scd_maps **out);
void skv_scd_maps_free(skv_scd_maps *m);
void skv_scd_maps_shape(const skv_scd_maps *m, skv_scd_shape *s);
/* SKV_ERR_SHAPE naming the field when the maps do not fit the model (layers, K/V width, dim). */
skv_status skv_scd_maps_check(const skv_scd_maps *m, const skv_model *model);
/* Producer: rows of one layer to codes. part K: de-RoPE'd K (n, kv_dim); V: (n, kv_dim);
 * H: normalised attention input (n, dim). z: (n, rank of the part). */
skv_status skv_scd_encode(const skv_scd_maps *m, int32_t layer, int part, const float *x, int32_t n, float *z);
/* Consumer: codes to rows. K: the consumer's de-RoPE'd K (n, kv_dim); V: its V; H: its
 * normalised attention input (n, dim) through the aligner. */
skv_status skv_scd_decode(const skv_scd_maps *m, int32_t layer, int part, const float *z, int32_t n, float *out);

/* What a consumer's layer is filled from (every array n rows): SKV_SCD_SRC_CODES: zk, zv
 * (reuse) or zh (patch = 1); SKV_SCD_SRC_ROWS: k (de-RoPE'd) and v rows as they are (raw
 * cross-model KV, a dequantized 4-bit cache, or recomputed rows). */
enum { SKV_SCD_SRC_CODES = 0, SKV_SCD_SRC_ROWS = 1 };
typedef struct skv_scd_layer_src {
    int32_t src, patch;
    const float *zk, *zv, *zh;
    const float *k, *v;
} skv_scd_layer_src;
/* Fill the empty consumer context c with n tokens (positions 0..n-1) of every layer from
 * src[n_layer] (maps may be NULL when every layer is SKV_SCD_SRC_ROWS). Deterministic: the same
 * codes give the same cache bit for bit, in any process. */
skv_status skv_scd_rebuild(const skv_scd_maps *m, skv_context *c, int32_t n, const skv_scd_layer_src *src);

/* ------------------------------------------------------------------------------------------ */
/* Sampling                                                                                     */
/* ------------------------------------------------------------------------------------------ */

typedef struct skv_sampler_params {
    float temperature;        /* 0: greedy (argmax) */
    int32_t top_k;            /* 0: off */
    float top_p;              /* 1: off */
    float repetition_penalty; /* 1: off (CTRL-style: logit/p if > 0 else logit*p, on seen ids) */
    int32_t penalty_last_n;   /* how many recent ids the penalty looks at; 0: all */
    uint64_t seed;
} skv_sampler_params;

skv_sampler_params skv_sampler_default_params(void);
skv_status skv_sampler_init(skv_sampler_params params, int32_t n_vocab, skv_sampler **out);
void skv_sampler_free(skv_sampler *s);
/* Record an id as seen (prompt or generated) for the repetition penalty. */
void skv_sampler_accept(skv_sampler *s, int32_t id);
/* Pick the next id from logits[n_vocab]; logits may be modified. */
int32_t skv_sampler_sample(skv_sampler *s, float *logits);

/* ------------------------------------------------------------------------------------------ */
/* Misc                                                                                         */
/* ------------------------------------------------------------------------------------------ */

const char *skv_version(void);
/* Monotonic wall-clock time in seconds. */
double skv_time_now(void);

#ifdef __cplusplus
}
#endif
#endif /* SLIMKV_H */
