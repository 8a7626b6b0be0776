// The built-in corpus. The text is a sequence of independent lines, each ending in '\n'; a
// line's kind is drawn first, then the line is drawn from that kind's source:
//
//   kind       weight  example                 first byte   source
//   sums         2     "3+4=7\n"               digit        a, b uniform in 0..9; "a+b=(a+b)\n"
//   words        3     "the cat sees a kid\n"  lowercase    first-order Markov chain over 16 words
//   brackets     2     "([()])[]\n"            ( or [       random walk over depth 0..3, 2 types
//   names        3     "OHAKGO\n"              uppercase    first-order Markov chain over letters A..P
//
// Entropy rate (what builtin_corpus_entropy() returns). Lines are i.i.d. and each ends with the
// only '\n' it contains, so the text splits uniquely into lines and, by the renewal argument,
// the entropy rate is H(line) / E[bytes per line]. Each line is a one-to-one image of the random
// choices that made it, so H(line) = H(choices):
//   - the kind is visible from the first byte (digit / lowercase / bracket / uppercase);
//   - sums: the two operands are the bytes before and after '+'; the answer is a function of them;
//   - words: words are separated by ' ' and contain none, so the word sequence is recovered;
//     the end of the line is the choice "stop" made after the last word;
//   - brackets: each byte is one choice (open '(' , open '[', close, stop = '\n'); a closing
//     byte is forced to match the innermost open bracket, so ')' and ']' both mean "close";
//   - names: each letter is one choice, '\n' is the choice "stop".
// Each choice is drawn from a distribution that depends only on a small state (the previous
// word or letter, the bracket depth), so by the chain rule
//   H(choices) = H(kind) + sum_k p_k * (H(start_k) + sum_s n_k(s) * h_k(s)),
//   E[bytes]   = sum_k p_k * sum_s n_k(s) * b_k(s),
// with n_k(s) the expected number of visits to state s of kind k's absorbing Markov chain
// (n = start * (I - Q)^-1, solved exactly below), h_k(s) the entropy of the choice made there and
// b_k(s) the expected bytes emitted at that visit. The result is 1.0459 nats/byte.
//
// Learnability: every deterministic byte depends on a short context (a single-digit sum, the
// rest of a word after its first letter, a closing bracket at depth <= 3), and most entropy comes
// from small fixed distributions (operands, next word, next letter), so a small byte-level
// transformer approaches the floor in a few hundred steps (the default `moe train`, 4 layers,
// hidden 128, ends ~0.01 nats/byte above it on held-out text after about a minute on 2 cores).
#include "data/corpus.h"

#include <array>
#include <cmath>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "core/rng.h"

namespace moe {

namespace {

constexpr const char* kOp = "corpus";

enum Kind { kKindSums = 0, kKindWords = 1, kKindBrackets = 2, kKindNames = 3, kNumKinds = 4 };
constexpr std::array<int, kNumKinds> kKindWeight = {2, 3, 2, 3};

// Words: first letters are all different, so a word is known from its first byte.
constexpr int kNumWords = 16;
constexpr std::array<const char*, kNumWords> kWords = {
    "the", "a", "big", "old", "cat", "dog", "kid", "fish",
    "jam", "park", "eats", "likes", "has", "sees", "in", "my"};
// kWordNext[w] = the 4 words that may follow w, in order of kWordWeight.
constexpr int kWordSucc = 4;
constexpr std::array<std::array<int, kWordSucc>, kNumWords> kWordNext = {{
    {4, 5, 2, 9},      // the  -> cat dog big park
    {2, 6, 7, 3},      // a    -> big kid fish old
    {5, 4, 7, 9},      // big  -> dog cat fish park
    {4, 5, 6, 9},      // old  -> cat dog kid park
    {10, 13, 11, 12},  // cat  -> eats sees likes has
    {13, 12, 10, 14},  // dog  -> sees has eats in
    {11, 10, 12, 13},  // kid  -> likes eats has sees
    {14, 10, 12, 11},  // fish -> in eats has likes
    {14, 12, 11, 10},  // jam  -> in has likes eats
    {12, 14, 13, 11},  // park -> has in sees likes
    {7, 8, 0, 15},     // eats -> fish jam the my
    {0, 15, 8, 7},     // likes-> the my jam fish
    {1, 15, 0, 8},     // has  -> a my the jam
    {0, 1, 15, 6},     // sees -> the a my kid
    {0, 1, 15, 9},     // in   -> the a my park
    {5, 4, 3, 8},      // my   -> dog cat old jam
}};
// After each word: stop (weight 4) or one of the 4 successors (6, 5, 3, 2). Mean 5 words.
constexpr std::array<int, 1 + kWordSucc> kWordWeight = {4, 6, 5, 3, 2};

// Names: letters A..P; letter i may be followed by letter (5i + 3j + 1) mod 16, j = 0..5 (six
// distinct letters since 3 is invertible mod 16), with weights below, or stop. Mean 10 letters.
constexpr int kNumLetters = 16;
constexpr int kLetterSucc = 6;
constexpr std::array<int, 1 + kLetterSucc> kLetterWeight = {2, 6, 4, 3, 2, 2, 1};
int next_letter(int i, int j) { return (5 * i + 3 * j + 1) % kNumLetters; }

// Brackets: depth never exceeds kMaxDepth. At depth 0 (after the first bracket): stop or open
// '(' or '['; at depth 1..kMaxDepth-1: close or open; at kMaxDepth: close (forced).
constexpr int kMaxDepth = 3;
constexpr std::array<int, 3> kTopWeight = {2, 1, 1};    // stop, '(', '['
constexpr std::array<int, 3> kInnerWeight = {2, 1, 1};  // close, '(', '['

// Index of the choice drawn by u in (0, 1] from integer weights.
template <size_t N>
int pick(const std::array<int, N>& w, double u) {
  int total = 0;
  for (int x : w) total += x;
  const double x = u * total;
  double cum = 0;
  for (size_t i = 0; i < N; ++i) {
    cum += w[i];
    if (x <= cum) return static_cast<int>(i);
  }
  return static_cast<int>(N) - 1;  // u == 1 up to rounding
}

template <size_t N>
double prob(const std::array<int, N>& w, int i) {
  int total = 0;
  for (int x : w) total += x;
  return static_cast<double>(w[i]) / total;
}

template <size_t N>
double entropy(const std::array<int, N>& w) {
  double h = 0;
  for (size_t i = 0; i < N; ++i)
    if (w[i] > 0) h -= prob(w, static_cast<int>(i)) * std::log(prob(w, static_cast<int>(i)));
  return h;
}

// Uniform index in [0, n) from u in (0, 1].
int pick_uniform(int n, double u) {
  const int i = static_cast<int>(std::ceil(u * n)) - 1;
  return i < 0 ? 0 : i >= n ? n - 1 : i;
}

// Draws choices in order from one Philox stream.
struct Source {
  uint64_t seed, stream, index = 0;
  double next() { return uniform01(seed, stream, index++); }
};

void gen_sums(Source& r, std::string& out) {
  const int a = pick_uniform(10, r.next());
  const int b = pick_uniform(10, r.next());
  out += static_cast<char>('0' + a);
  out += '+';
  out += static_cast<char>('0' + b);
  out += '=';
  out += std::to_string(a + b);
  out += '\n';
}

void gen_words(Source& r, std::string& out) {
  int w = pick_uniform(kNumWords, r.next());
  for (;;) {
    out += kWords[w];
    const int c = pick(kWordWeight, r.next());
    if (c == 0) break;
    out += ' ';
    w = kWordNext[w][c - 1];
  }
  out += '\n';
}

void gen_brackets(Source& r, std::string& out) {
  std::vector<char> stack;  // open brackets, innermost last
  stack.push_back(r.next() <= 0.5 ? '(' : '[');
  out += stack.back();
  for (;;) {
    const int depth = static_cast<int>(stack.size());
    int c;
    if (depth == 0) {
      c = pick(kTopWeight, r.next());
      if (c == 0) break;
    } else if (depth == kMaxDepth) {
      c = 0;  // forced close, no randomness drawn
    } else {
      c = pick(kInnerWeight, r.next());
    }
    if (depth > 0 && c == 0) {
      out += stack.back() == '(' ? ')' : ']';
      stack.pop_back();
    } else {
      stack.push_back(c == 1 ? '(' : '[');
      out += stack.back();
    }
  }
  out += '\n';
}

void gen_names(Source& r, std::string& out) {
  int l = pick_uniform(kNumLetters, r.next());
  for (;;) {
    out += static_cast<char>('A' + l);
    const int c = pick(kLetterWeight, r.next());
    if (c == 0) break;
    l = next_letter(l, c - 1);
  }
  out += '\n';
}

// Expected visits n = start (I - Q)^-1 of an absorbing chain with S transient states; returns
// H(start) + sum n h and sum n b (see the derivation at the top of the file).
struct ChainStats {
  double nats = 0, bytes = 0;
};
ChainStats chain_stats(const std::vector<double>& start, const std::vector<std::vector<double>>& Q,
                       const std::vector<double>& h, const std::vector<double>& b) {
  const size_t S = start.size();
  // Solve (I - Q)^T n = start by Gauss-Jordan elimination with partial pivoting.
  std::vector<std::vector<double>> A(S, std::vector<double>(S + 1));
  for (size_t i = 0; i < S; ++i) {
    for (size_t j = 0; j < S; ++j) A[i][j] = (i == j ? 1.0 : 0.0) - Q[j][i];
    A[i][S] = start[i];
  }
  for (size_t c = 0; c < S; ++c) {
    size_t p = c;
    for (size_t i = c + 1; i < S; ++i)
      if (std::fabs(A[i][c]) > std::fabs(A[p][c])) p = i;
    std::swap(A[c], A[p]);
    for (size_t i = 0; i < S; ++i) {
      if (i == c) continue;
      const double f = A[i][c] / A[c][c];
      for (size_t j = c; j <= S; ++j) A[i][j] -= f * A[c][j];
    }
  }
  ChainStats st;
  for (size_t i = 0; i < S; ++i) {
    const double n = A[i][S] / A[i][i];
    st.nats += n * h[i];
    st.bytes += n * b[i];
    if (start[i] > 0) st.nats -= start[i] * std::log(start[i]);
  }
  return st;
}

ChainStats sums_stats() {
  int carries = 0;  // operand pairs whose sum has two digits
  for (int a = 0; a < 10; ++a)
    for (int b = 0; b < 10; ++b) carries += a + b >= 10;
  return {2 * std::log(10.0), 6.0 + carries / 100.0};  // "a+b=c\n" is 6 or 7 bytes
}

ChainStats words_stats() {
  // State w = "word w was just written"; the visit writes w and its separator (' ' or '\n').
  std::vector<double> start(kNumWords, 1.0 / kNumWords), h(kNumWords, entropy(kWordWeight)), b;
  std::vector<std::vector<double>> Q(kNumWords, std::vector<double>(kNumWords, 0.0));
  for (int w = 0; w < kNumWords; ++w) {
    b.push_back(std::string_view(kWords[w]).size() + 1.0);
    for (int j = 0; j < kWordSucc; ++j)
      Q[w][static_cast<size_t>(kWordNext[w][j])] +=
          prob(kWordWeight, j + 1);
  }
  return chain_stats(start, Q, h, b);
}

ChainStats names_stats() {
  // State l = "letter l was just written"; the visit writes l and, on stop, the '\n'.
  const double p_stop = prob(kLetterWeight, 0);
  std::vector<double> start(kNumLetters, 1.0 / kNumLetters), h(kNumLetters, entropy(kLetterWeight));
  std::vector<double> b(kNumLetters, 1.0 + p_stop);
  std::vector<std::vector<double>> Q(kNumLetters, std::vector<double>(kNumLetters, 0.0));
  for (int l = 0; l < kNumLetters; ++l)
    for (int j = 0; j < kLetterSucc; ++j)
      Q[l][next_letter(l, j)] += prob(kLetterWeight, j + 1);
  return chain_stats(start, Q, h, b);
}

ChainStats brackets_stats() {
  // States: 0 = line start (must open), 1..kMaxDepth = depth, kMaxDepth+1 = depth 0 after the
  // first bracket. Every visit writes exactly one byte (a bracket or the final '\n').
  const size_t S = kMaxDepth + 2, top = kMaxDepth + 1;
  std::vector<double> start(S, 0.0), h(S, 0.0), b(S, 1.0);
  std::vector<std::vector<double>> Q(S, std::vector<double>(S, 0.0));
  start[0] = 1.0;
  Q[0][1] = 1.0;
  h[0] = std::log(2.0);  // '(' or '['
  for (size_t d = 1; d <= kMaxDepth; ++d) {
    const size_t down = d == 1 ? top : d - 1;
    if (d == kMaxDepth) {
      Q[d][down] = 1.0;
    } else {
      Q[d][down] = prob(kInnerWeight, 0);
      Q[d][d + 1] = 1.0 - prob(kInnerWeight, 0);
      h[d] = entropy(kInnerWeight);
    }
  }
  Q[top][1] = 1.0 - prob(kTopWeight, 0);
  h[top] = entropy(kTopWeight);
  return chain_stats(start, Q, h, b);
}

// -ln P(choice) helpers for scoring; `ok` turns false on anything the source cannot produce.
struct Scorer {
  double nats = 0;
  bool ok = true;
  void add(double p) {
    if (p > 0) nats -= std::log(p);
    else ok = false;
  }
};

void score_sums(std::string_view s, Scorer& sc) {
  const bool shape = (s.size() == 5 || s.size() == 6) && s[1] == '+' && s[3] == '=' &&
                     s[0] >= '0' && s[0] <= '9' && s[2] >= '0' && s[2] <= '9';
  if (!shape || std::to_string((s[0] - '0') + (s[2] - '0')) != s.substr(4)) sc.ok = false;
  sc.add(0.1);
  sc.add(0.1);
}

void score_words(std::string_view s, Scorer& sc) {
  int prev = -1;
  size_t pos = 0;
  while (sc.ok) {
    const size_t sp = std::min(s.find(' ', pos), s.size());
    const std::string_view word = s.substr(pos, sp - pos);
    int w = -1;
    for (int i = 0; i < kNumWords; ++i)
      if (word == kWords[i]) w = i;
    if (w < 0) {
      sc.ok = false;
      break;
    }
    if (prev < 0) {
      sc.add(1.0 / kNumWords);
    } else {
      int j = -1;
      for (int k = 0; k < kWordSucc; ++k)
        if (kWordNext[prev][k] == w) j = k;
      sc.add(j < 0 ? 0.0 : prob(kWordWeight, j + 1));
    }
    prev = w;
    if (sp == s.size()) {
      sc.add(prob(kWordWeight, 0));
      break;
    }
    pos = sp + 1;
  }
}

void score_brackets(std::string_view s, Scorer& sc) {
  std::vector<char> stack;
  for (size_t i = 0; i < s.size() && sc.ok; ++i) {
    const char ch = s[i];
    const int depth = static_cast<int>(stack.size());
    const bool open = ch == '(' || ch == '[';
    const bool close = ch == ')' || ch == ']';
    if (i == 0) {
      sc.add(open ? 0.5 : 0.0);
    } else if (depth == 0) {
      sc.add(open ? prob(kTopWeight, ch == '(' ? 1 : 2) : 0.0);
    } else if (depth == kMaxDepth) {
      sc.add(close ? 1.0 : 0.0);
    } else {
      sc.add(open ? prob(kInnerWeight, ch == '(' ? 1 : 2) : close ? prob(kInnerWeight, 0) : 0.0);
    }
    if (open) stack.push_back(ch);
    if (close) {
      if (stack.empty() || (stack.back() == '(') != (ch == ')')) sc.ok = false;
      else stack.pop_back();
    }
  }
  if (!stack.empty() || s.empty()) sc.ok = false;
  sc.add(prob(kTopWeight, 0));  // the stop choice that wrote '\n'
}

void score_names(std::string_view s, Scorer& sc) {
  for (size_t i = 0; i < s.size() && sc.ok; ++i) {
    const int l = s[i] - 'A';
    if (l < 0 || l >= kNumLetters) {
      sc.ok = false;
      break;
    }
    if (i == 0) {
      sc.add(1.0 / kNumLetters);
    } else {
      const int prev = s[i - 1] - 'A';
      int j = -1;
      for (int k = 0; k < kLetterSucc; ++k)
        if (next_letter(prev, k) == l) j = k;
      sc.add(j < 0 ? 0.0 : prob(kLetterWeight, j + 1));
    }
  }
  sc.add(prob(kLetterWeight, 0));
}

}  // namespace

Corpus make_builtin_corpus(uint64_t seed, int64_t n_bytes) {
  MOE_CHECK(n_bytes >= 0, kOp, "n_bytes = ", n_bytes, " must be >= 0");
  Corpus c;
  c.entropy_nats_per_byte = builtin_corpus_entropy();
  c.text.reserve(static_cast<size_t>(n_bytes) + 64);
  Source r{seed, stream_id("moe.builtin_corpus")};
  while (static_cast<int64_t>(c.text.size()) < n_bytes) {
    switch (pick(kKindWeight, r.next())) {
      case kKindSums: gen_sums(r, c.text); break;
      case kKindWords: gen_words(r, c.text); break;
      case kKindBrackets: gen_brackets(r, c.text); break;
      default: gen_names(r, c.text); break;
    }
  }
  c.text.resize(static_cast<size_t>(n_bytes));
  return c;
}

double builtin_corpus_entropy() {
  const ChainStats k[kNumKinds] = {sums_stats(), words_stats(), brackets_stats(), names_stats()};
  double nats = entropy(kKindWeight), bytes = 0;
  for (int i = 0; i < kNumKinds; ++i) {
    nats += prob(kKindWeight, i) * k[i].nats;
    bytes += prob(kKindWeight, i) * k[i].bytes;
  }
  return nats / bytes;
}

double builtin_line_information(std::string_view line) {
  MOE_CHECK(!line.empty() && line.back() == '\n', kOp,
            "a line must end with '\\n'; pass one complete line of the built-in corpus");
  const std::string_view s = line.substr(0, line.size() - 1);
  MOE_CHECK(!s.empty() && s.find('\n') == std::string_view::npos, kOp,
            "expected one non-empty line, got ", line.size(), " bytes");
  Scorer sc;
  const char f = s[0];
  if (f >= '0' && f <= '9') {
    sc.add(prob(kKindWeight, kKindSums));
    score_sums(s, sc);
  } else if (f >= 'a' && f <= 'z') {
    sc.add(prob(kKindWeight, kKindWords));
    score_words(s, sc);
  } else if (f == '(' || f == '[') {
    sc.add(prob(kKindWeight, kKindBrackets));
    score_brackets(s, sc);
  } else if (f >= 'A' && f <= 'Z') {
    sc.add(prob(kKindWeight, kKindNames));
    score_names(s, sc);
  } else {
    sc.ok = false;
  }
  MOE_CHECK(sc.ok, kOp, "the line \"", s, "\" cannot be produced by the built-in corpus");
  return sc.nats;
}

}  // namespace moe
