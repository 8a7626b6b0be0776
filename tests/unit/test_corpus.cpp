#include "data/corpus.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>
#include <sstream>

#include "core/error.h"

namespace moe {
namespace {

// Independent well-formedness checks, one per kind (not using the library's decoder).
bool is_sum(const std::string& s) {
  if (s.size() < 5 || !std::isdigit(static_cast<unsigned char>(s[0])) || s[1] != '+' ||
      !std::isdigit(static_cast<unsigned char>(s[2])) || s[3] != '=')
    return false;
  return s.substr(4) == std::to_string((s[0] - '0') + (s[2] - '0'));
}

bool is_sentence(const std::string& s) {
  static const std::set<std::string> vocab = {"the",  "a",   "big",   "old", "cat",  "dog",
                                              "kid",  "fish", "jam",  "park", "eats", "likes",
                                              "has",  "sees", "in",   "my"};
  std::istringstream in(s);
  std::string w;
  size_t n = 0, bytes = 0;
  while (std::getline(in, w, ' ')) {
    if (!vocab.count(w)) return false;
    bytes += w.size() + 1;
    ++n;
  }
  return n > 0 && bytes == s.size() + 1;  // single spaces, none leading or trailing
}

bool is_brackets(const std::string& s, int* max_depth) {
  std::string stack;
  *max_depth = 0;
  for (char c : s) {
    if (c == '(' || c == '[') {
      stack += c;
      *max_depth = std::max(*max_depth, static_cast<int>(stack.size()));
    } else if (c == ')' || c == ']') {
      if (stack.empty() || stack.back() != (c == ')' ? '(' : '[')) return false;
      stack.pop_back();
    } else {
      return false;
    }
  }
  return !s.empty() && stack.empty();
}

bool is_name(const std::string& s) {
  for (char c : s)
    if (c < 'A' || c > 'P') return false;
  return !s.empty();
}

TEST(Corpus, Deterministic) {
  const Corpus a = make_builtin_corpus(42, 100000), b = make_builtin_corpus(42, 100000);
  EXPECT_EQ(a.text.size(), 100000u);
  EXPECT_EQ(a.text, b.text);
  // A shorter request is a prefix of a longer one.
  EXPECT_EQ(make_builtin_corpus(42, 777).text, a.text.substr(0, 777));
  const Corpus c = make_builtin_corpus(43, 100000);
  EXPECT_NE(a.text, c.text);
  EXPECT_EQ(make_builtin_corpus(1, 0).text, "");
  EXPECT_THROW(make_builtin_corpus(1, -1), Error);
  EXPECT_EQ(a.entropy_nats_per_byte, builtin_corpus_entropy());
}

TEST(Corpus, EntropyIsInTheTargetRange) {
  const double h = builtin_corpus_entropy();
  EXPECT_GT(h, 0.9);
  EXPECT_LT(h, 1.5);
}

// Every line parses as one of the four kinds; all kinds appear with about their weights.
TEST(Corpus, LinesAreWellFormed) {
  const Corpus c = make_builtin_corpus(7, 500000);
  std::map<char, int> kinds;  // 's'ums, 'w'ords, 'b'rackets, 'n'ames
  int deepest = 0;
  size_t pos = 0, lines = 0;
  for (size_t nl; (nl = c.text.find('\n', pos)) != std::string::npos; pos = nl + 1) {
    const std::string s = c.text.substr(pos, nl - pos);
    int depth = 0;
    if (is_sum(s)) ++kinds['s'];
    else if (is_sentence(s)) ++kinds['w'];
    else if (is_brackets(s, &depth)) ++kinds['b'];
    else if (is_name(s)) ++kinds['n'];
    else ADD_FAILURE() << "malformed line " << lines << ": \"" << s << "\"";
    deepest = std::max(deepest, depth);
    ++lines;
  }
  EXPECT_GT(lines, 30000u);
  EXPECT_EQ(deepest, 3);  // the depth cap is reached and never exceeded
  // Kind weights 2:3:2:3.
  for (auto [k, w] : std::map<char, double>{{'s', 0.2}, {'w', 0.3}, {'b', 0.2}, {'n', 0.3}})
    EXPECT_NEAR(kinds[k] / static_cast<double>(lines), w, 0.01) << k;
}

// The information content of the actual text (-ln P of each line, decoded back into the
// choices that made it), per byte, converges to the analytic entropy rate.
TEST(Corpus, EmpiricalInformationMatchesEntropy) {
  const Corpus c = make_builtin_corpus(2024, 2 << 20);
  double nats = 0;
  size_t bytes = 0, pos = 0;
  for (size_t nl; (nl = c.text.find('\n', pos)) != std::string::npos; pos = nl + 1) {
    nats += builtin_line_information(std::string_view(c.text).substr(pos, nl + 1 - pos));
    bytes += nl + 1 - pos;
  }
  const double h = builtin_corpus_entropy();
  EXPECT_NEAR(nats / bytes, h, 0.01 * h) << "empirical " << nats / bytes << " analytic " << h;
}

TEST(Corpus, LineInformationValues) {
  const double sums = -std::log(0.2) + 2 * std::log(10.0);
  EXPECT_NEAR(builtin_line_information("3+4=7\n"), sums, 1e-12);
  EXPECT_NEAR(builtin_line_information("9+9=18\n"), sums, 1e-12);
  // kind 0.2, first '(' 1/2, close at depth 1 (1/2), stop at depth 0 (1/2).
  EXPECT_NEAR(builtin_line_information("()\n"), -std::log(0.2 * 0.5 * 0.5 * 0.5), 1e-12);
  // Depth 3 closes are forced: "((()))" = first open, open (1/4), open (1/4), forced close,
  // close (1/2), close (1/2), stop (1/2).
  EXPECT_NEAR(builtin_line_information("((()))\n"),
              -std::log(0.2 * 0.5 * 0.25 * 0.25 * 1 * 0.5 * 0.5 * 0.5), 1e-12);
  // kind 0.3, first word 1/16, "the" -> "cat" (6/20), stop (4/20).
  EXPECT_NEAR(builtin_line_information("the cat\n"), -std::log(0.3 / 16 * 0.3 * 0.2), 1e-12);
  for (const char* bad : {"3+4=8\n", "3+4=7", "((((()))))\n", "([)]\n", "the the\n", "cow\n",
                          "the  cat\n", "AZ\n", "AC\n", "#\n", "\n", "a\nb\n", "()(\n"})
    EXPECT_THROW(builtin_line_information(bad), Error) << bad;
}

}  // namespace
}  // namespace moe
