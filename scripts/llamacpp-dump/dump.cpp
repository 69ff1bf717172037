// llama.cpp's teacher-forced logits, and optionally every tensor of one step, for checking
// ferrolm's CPU arithmetic against llama.cpp's (README.md). Runs as the goldens were made
// (shared/golden/make_golden.py through llama-cpp-python): n_ctx 2048, n_batch 512, 2 threads,
// flash attention off, the prompt as one batch, then one token at a time.
//
//   dump MODEL REQUESTS LOGITS_OUT
//     REQUESTS: one line per record, "prompt ids|target ids" (golden_reqs.py writes them);
//     LOGITS_OUT: f32 logits, one row per step (the prompt's last row, then each target but
//     the last fed in turn).
//   env: KV_F32=1 (f32 KV cache), FA=1 (flash attention), DUMP_DIR=D with DUMP_REC=r and
//     DUMP_STEP=s (-1: the prompt; k: feeding target k): every tensor of that step to
//     D/NAME[#k].bin (9 int64: type, ne[4], nb[4]; then the bytes); "#k" numbers repeats.
#include "ggml.h"
#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

static const char *dump_dir = nullptr;
static int dump_step = -1, dump_rec = 0, cur_step = -2, cur_rec = -1;

static bool on_tensor(struct ggml_tensor *t, bool ask, void *) {
    if (ask) return dump_dir && cur_step == dump_step && cur_rec == dump_rec;
    static std::map<std::string, int> seen;
    std::string name = ggml_get_name(t);
    int k = seen[name]++;
    std::string path = std::string(dump_dir) + "/" + name + (k ? "#" + std::to_string(k) : "") + ".bin";
    FILE *f = fopen(path.c_str(), "wb");
    if (!f) return true;
    int64_t head[9] = {t->type, t->ne[0], t->ne[1], t->ne[2], t->ne[3],
                       (int64_t)t->nb[0], (int64_t)t->nb[1], (int64_t)t->nb[2], (int64_t)t->nb[3]};
    fwrite(head, sizeof head, 1, f);
    fwrite(t->data, 1, ggml_nbytes(t), f);
    fclose(f);
    return true;
}

static std::vector<llama_token> parse(const std::string &s) {
    std::vector<llama_token> v;
    std::istringstream in(s);
    for (int x; in >> x;) v.push_back(x);
    return v;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL REQUESTS LOGITS_OUT\n", argv[0]);
        return 2;
    }
    std::ifstream requests(argv[2]);
    FILE *out = fopen(argv[3], "wb");
    if (!requests || !out) {
        fprintf(stderr, "cannot open %s or %s\n", argv[2], argv[3]);
        return 1;
    }
    dump_dir = getenv("DUMP_DIR");
    if (getenv("DUMP_STEP")) dump_step = atoi(getenv("DUMP_STEP"));
    if (getenv("DUMP_REC")) dump_rec = atoi(getenv("DUMP_REC"));
    llama_backend_init();
    llama_model *model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (!model) return 1;
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    for (std::string line; std::getline(requests, line);) {
        cur_rec++;
        auto bar = line.find('|');
        std::vector<llama_token> prompt = parse(line.substr(0, bar)), targets = parse(line.substr(bar + 1));
        auto cp = llama_context_default_params();
        cp.n_ctx = 2048;
        cp.n_batch = cp.n_ubatch = 512;
        cp.n_threads = cp.n_threads_batch = 2;
        cp.flash_attn_type = getenv("FA") ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
        if (getenv("KV_F32")) cp.type_k = cp.type_v = GGML_TYPE_F32;
        cp.cb_eval = on_tensor;
        llama_context *ctx = llama_init_from_model(model, cp);
        llama_batch b = llama_batch_init(512, 0, 1);
        auto feed = [&](const llama_token *t, size_t n, size_t pos) {
            b.n_tokens = n;
            for (size_t i = 0; i < n; i++) {
                b.token[i] = t[i];
                b.pos[i] = pos + i;
                b.n_seq_id[i] = 1;
                b.seq_id[i][0] = 0;
                b.logits[i] = 1;  // every row, as logits_all
            }
            if (llama_decode(ctx, b)) {
                fprintf(stderr, "decode failed\n");
                exit(1);
            }
            fwrite(llama_get_logits_ith(ctx, n - 1), sizeof(float), n_vocab, out);
        };
        cur_step = -1;
        feed(prompt.data(), prompt.size(), 0);
        for (size_t k = 0; k + 1 < targets.size(); k++) {
            cur_step = k;
            feed(&targets[k], 1, prompt.size() + k);
        }
        llama_batch_free(b);
        llama_free(ctx);
    }
    fclose(out);
    return 0;
}
