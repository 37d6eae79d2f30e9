# frozen_string_literal: true

module GitlabMultistore
  VERSION = "0.1.0"
end
