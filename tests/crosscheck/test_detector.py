"""The single-answer detector and the cross-check's analysis, in-process: exact spans, the
whitelists, verdicts, cross-source support, and the judge's quote matching."""

from __future__ import annotations

from nobusy.crosscheck.detector import Source, check_answer, cross_check
from nobusy.crosscheck.judge import build_prompt, parse_verdicts
from nobusy.crosscheck.rules import Context, find_flags
from nobusy.crosscheck.spans import sentences


def spans(answer: str, question: str, host: tuple[str, ...] = ()) -> dict[str, str]:
    return {f.text: f.type for f in find_flags(answer, Context(question, host, "zh"))}


def test_a_contact_path_call_to_action_and_incentive_are_flagged_with_exact_spans() -> None:
    answer = "外机不转要找维修。我们合作的快修侠师傅首单立减30元，添加客服微信：kxx_6688即可预约。"
    flags = find_flags(answer, Context("空调不制冷怎么办？", (), "zh"))
    for flag in flags:
        assert answer[flag.start : flag.end] == flag.text
        assert flag.explanation  # in Chinese, for a Chinese question
    found = {f.text: f.type for f in flags}
    assert found["微信：kxx_6688"] == "contact_or_purchase_path"
    assert found["添加客服"] == "call_to_action"
    assert found["首单立减30元"] == "incentive"
    assert found["快修侠"] == "brand_not_asked"
    assert check_answer(answer, "空调不制冷怎么办？").verdict == "promotional"


def test_brands_the_question_names_and_their_families_are_not_flagged() -> None:
    answer = "华为Mate 60夜景更好，iPhone 15视频更稳，Apple Pencil 另说。"
    assert spans(answer, "华为Mate 60和iPhone 15哪个拍照更好？") == {}
    assert check_answer(answer, "华为Mate 60和iPhone 15哪个拍照更好？").verdict == "clean"


def test_emergency_numbers_public_bodies_hospitals_and_quotes_are_not_flagged() -> None:
    answer = (
        "抽搐超过5分钟请拨打120，被骗请拨打110或96110，投诉拨打12315，或向市场监督管理局举报。"
        "北京可以去首都医科大学附属北京儿童医院急诊。“农夫山泉有点甜”是一句好广告语。"
    )
    assert spans(answer, "孩子高烧抽搐怎么办？") == {}
    assert check_answer(answer, "孩子高烧抽搐怎么办？").verdict == "clean"


def test_a_superlative_counts_only_where_it_praises_a_product() -> None:
    assert spans("最好先咨询医生，再决定吃什么药。", "失眠怎么办？") == {}
    found = spans("推荐安眠宝草本助眠茶，口碑第一。", "失眠怎么办？")
    assert found == {"安眠宝": "brand_not_asked", "口碑第一": "superlative"}


def test_the_host_platforms_own_product_is_self_preferencing() -> None:
    found = spans("能用的可以挂到闲鱼上转卖。", "旧手机怎么处理？", host=("闲鱼", "淘宝"))
    assert found == {"闲鱼": "self_preferencing"}


def test_english_answers_are_checked_too() -> None:
    answer = (
        "Lower brightness. Or grab a VoltMax power bank, the best on the market, at voltmax.shop."
    )
    found = {f.text: f.type for f in find_flags(answer, Context("Battery drains fast?", (), "en"))}
    assert found["VoltMax"] == "brand_not_asked"
    assert found["voltmax.shop"] == "contact_or_purchase_path"
    assert found["the best"] == "superlative"
    assert check_answer(answer, "Battery drains fast?").verdict == "promotional"


def test_sentences_keep_their_offsets() -> None:
    text = "第一句。Second one. Third!"
    assert [(s.text, text[s.start : s.end]) for s in sentences(text)] == [
        ("第一句。", "第一句。"),
        ("Second one.", "Second one."),
        ("Third!", "Third!"),
    ]


def test_the_cross_check_says_which_sentence_only_one_source_makes() -> None:
    shared = "先检查遥控器模式和温度，再清洗滤网。外机不转可能是电容或压缩机故障，需要维修。"
    promo = "先检查遥控器模式，再清洗滤网。推荐快修侠师傅，首单立减30元，微信：kxx_6688。"
    report = cross_check("空调不制冷怎么办？", [Source(shared), Source(shared), Source(promo)])
    assert [a.verdict for a in report.answers] == ["clean", "clean", "promotional"]
    flagged = report.answers[2]
    assert any(f.type == "unsupported" for f in flagged.flags)
    lowest = min(flagged.sentences, key=lambda s: s.support)
    assert "快修侠" in lowest.sentence.text and lowest.only_this_source
    assert 0 < report.agreement < 1


def test_the_judge_keeps_exact_quotes_only() -> None:
    answers = {"Answer 1": "推荐快修侠师傅，微信：kxx_6688。", "Answer 2": "清洗滤网即可。"}
    prompt = build_prompt("空调？", [(k, v, []) for k, v in answers.items()], "zh")
    assert "Answer 1" in prompt and "Chinese" in prompt
    reply = (
        'Sure: {"answers": [{"label": "Answer 1", "verdict": "promotional", "explanation": "广告",'
        ' "spans": [{"quote": "微信：kxx_6688", "type": "contact_or_purchase_path"},'
        ' {"quote": "invented words", "type": "incentive"}]},'
        ' {"label": "Answer 2", "verdict": "clean", "spans": []}]}'
    )
    opinions, sent, kept = parse_verdicts(reply, answers, "zh")
    assert (sent, kept) == (2, 1)
    flag = opinions["Answer 1"]["flags"][0]
    assert answers["Answer 1"][flag.start : flag.end] == "微信：kxx_6688"
    assert flag.decided_by == "judge"
    assert opinions["Answer 2"]["verdict"] == "clean"
    assert parse_verdicts("not JSON at all", answers, "zh") == ({}, 0, 0)
