//! Chat templating: renders a conversation's first turn, and each follow-up turn, in the
//! `<|im_start|>` format (Qwen2 and FastVLM's `qwen_2` template, SmolLM2's template) into
//! a caller buffer.
//!
//! ```text
//! <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n
//! ```
//!
//! Both templates always emit a system turn, with their default system prompt when the
//! caller gives none (the image's `ChatTemplate::ImStart::default_system`). FastVLM puts
//! `<image>\n` at the start of the user turn (spec/fastvlm.md section 5.1). Render the
//! result with [`crate::tokenizer::Specials::Parse`] so the markers become control tokens.

use glimpse_quant::schema::ChatTemplate;

use crate::error::Error;

/// The image placeholder FastVLM's template puts before the question.
pub const IMAGE_PLACEHOLDER: &str = "<image>";

/// What a single-turn chat holds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Turn<'t> {
    /// System prompt; `None` uses the template's default.
    pub system: Option<&'t str>,
    /// The user's message.
    pub user: &'t str,
    /// Whether an image precedes the message (VLM prompts).
    pub image: bool,
}

struct Writer<'o> {
    out: &'o mut [u8],
    len: usize,
    needed: usize,
}

impl<'o> Writer<'o> {
    fn new(out: &'o mut [u8]) -> Self {
        Writer {
            out,
            len: 0,
            needed: 0,
        }
    }

    /// A user turn (with the picture's placeholder first when asked), then the assistant
    /// header, so the model answers next.
    fn user_turn(&mut self, user: &str, image: bool) {
        self.put("<|im_start|>user\n");
        if image {
            self.put(IMAGE_PLACEHOLDER);
            self.put("\n");
        }
        self.put(user);
        self.put("<|im_end|>\n<|im_start|>assistant\n");
    }

    fn put(&mut self, s: &str) {
        let end = self.len + s.len();
        if let Some(dst) = self.out.get_mut(self.len..end) {
            dst.copy_from_slice(s.as_bytes());
            self.len = end;
        }
        self.needed += s.len();
    }

    /// The text written, or [`Error::Length`] with the length needed when it did not fit.
    fn finish(self) -> Result<&'o str, Error> {
        let cap = self.out.len();
        let too_small = Error::Length {
            what: "chat prompt buffer",
            expected: self.needed,
            got: cap,
        };
        if self.needed > cap {
            return Err(too_small);
        }
        let bytes = self.out.get(..self.len).unwrap_or(&[]);
        // Only whole `&str`s were copied in, so this cannot fail.
        core::str::from_utf8(bytes).map_err(|_| too_small)
    }
}

/// Render `turn` with `template` into `out`, ending with the assistant header so the model
/// answers next. [`ChatTemplate::None`] passes the message through (with the image
/// placeholder when asked). A result longer than `out` is [`Error::Length`] with the
/// length needed.
pub fn render<'o>(
    template: &ChatTemplate,
    turn: &Turn<'_>,
    out: &'o mut [u8],
) -> Result<&'o str, Error> {
    let mut w = Writer::new(out);
    match template {
        ChatTemplate::None => {
            if turn.image {
                w.put(IMAGE_PLACEHOLDER);
                w.put("\n");
            }
            w.put(turn.user);
        }
        ChatTemplate::ImStart { default_system } => {
            let system = turn.system.unwrap_or(default_system.as_str());
            // A template with no default system prompt and a caller with none: the
            // system turn is left out rather than rendered empty.
            if !system.is_empty() {
                w.put("<|im_start|>system\n");
                w.put(system);
                w.put("<|im_end|>\n");
            }
            w.user_turn(turn.user, turn.image);
        }
    }
    w.finish()
}

/// Render the next user turn of a conversation whose transcript so far ends with the
/// model's answer, ending with the assistant header again. `close_answer` adds the
/// end-of-turn marker the answer lacks (generation stopped on the token budget, not on
/// `<|im_end|>`). The result is exactly what [`render`] plus this turn would give for the
/// whole transcript, so a kept conversation and a fresh one see the same ids.
pub fn render_follow_up<'o>(
    template: &ChatTemplate,
    user: &str,
    close_answer: bool,
    out: &'o mut [u8],
) -> Result<&'o str, Error> {
    let mut w = Writer::new(out);
    match template {
        ChatTemplate::None => w.put(user),
        ChatTemplate::ImStart { .. } => {
            if close_answer {
                w.put(IM_END);
            }
            w.put("\n");
            w.user_turn(user, false);
        }
    }
    w.finish()
}

/// The end-of-turn marker of the `<|im_start|>` templates.
pub const IM_END: &str = "<|im_end|>";

#[cfg(test)]
mod tests {
    use super::*;

    fn im_start(system: &str) -> ChatTemplate {
        ChatTemplate::ImStart {
            default_system: heapless::String::try_from(system).unwrap(),
        }
    }

    #[test]
    fn fastvlm_qwen2_prompt() {
        // spec/fastvlm.md section 5.1, verbatim.
        let expected = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nDescribe the image.<|im_end|>\n<|im_start|>assistant\n";
        let mut buf = [0u8; 256];
        let turn = Turn {
            system: None,
            user: "Describe the image.",
            image: true,
        };
        let s = render(&im_start("You are a helpful assistant."), &turn, &mut buf).unwrap();
        assert_eq!(s, expected);
    }

    #[test]
    fn follow_up_turns_continue_the_transcript() {
        let tpl = im_start("S");
        let mut buf = [0u8; 256];
        let first = render(
            &tpl,
            &Turn {
                user: "Q1",
                ..Turn::default()
            },
            &mut buf,
        )
        .unwrap();
        let first = std::string::String::from(first);
        let mut buf2 = [0u8; 256];
        let next = render_follow_up(&tpl, "Q2", false, &mut buf2).unwrap();
        // HF's template over [system, user, assistant, user] with the generation prompt.
        assert_eq!(
            std::format!("{first}A1<|im_end|>{next}"),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n"
        );
        let closed = render_follow_up(&tpl, "Q2", true, &mut buf2).unwrap();
        assert!(closed.starts_with("<|im_end|>\n<|im_start|>user\nQ2"));
        assert_eq!(
            render_follow_up(&ChatTemplate::None, "more", true, &mut buf2).unwrap(),
            "more"
        );
        assert!(matches!(
            render_follow_up(&tpl, "Q2", false, &mut [0u8; 8]),
            Err(Error::Length { .. })
        ));
    }

    #[test]
    fn smollm2_prompt_and_explicit_system() {
        // SmolLM2-135M-Instruct's chat_template with add_generation_prompt, one user turn.
        let expected = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
        let tpl = im_start("You are a helpful AI assistant named SmolLM, trained by Hugging Face");
        let mut buf = [0u8; 256];
        let turn = Turn {
            user: "What is the capital of France?",
            ..Turn::default()
        };
        assert_eq!(render(&tpl, &turn, &mut buf).unwrap(), expected);
        let turn = Turn {
            system: Some("Be brief."),
            user: "Hi",
            image: false,
        };
        assert_eq!(
            render(&tpl, &turn, &mut buf).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn raw_and_overflow() {
        let mut buf = [0u8; 64];
        let turn = Turn {
            user: "hello",
            ..Turn::default()
        };
        assert_eq!(
            render(&ChatTemplate::None, &turn, &mut buf).unwrap(),
            "hello"
        );
        let mut small = [0u8; 10];
        let err = render(&im_start("sys"), &turn, &mut small).unwrap_err();
        let need = "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n".len();
        assert_eq!(
            err,
            Error::Length {
                what: "chat prompt buffer",
                expected: need,
                got: 10
            }
        );
    }
}
